// The 3D preview: the model (binary STL, mm, LPS) drawn with three.js, served by this app.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { STLLoader } from "three/addons/loaders/STLLoader.js";

const canvas = document.getElementById("preview");
const note = document.getElementById("preview-note");
if (canvas) {
  let renderer;
  try {
    renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
  } catch (_) {
    note.textContent = "This browser cannot show the 3D preview (no WebGL); the download works.";
  }
  if (renderer) {
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    renderer.setSize(canvas.clientWidth, canvas.clientWidth * 0.625, false);
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(0x202631);
    const camera = new THREE.PerspectiveCamera(35, canvas.width / canvas.height, 0.1, 1e5);
    // LPS: +z is superior; show the patient upright, seen from the front (anterior is -y).
    camera.up.set(0, 0, 1);
    scene.add(new THREE.HemisphereLight(0xffffff, 0x404050, 1.2));
    const light = new THREE.DirectionalLight(0xffffff, 1.5);
    scene.add(light);
    const controls = new OrbitControls(camera, canvas);
    const draw = () => { light.position.copy(camera.position); renderer.render(scene, camera); };
    controls.addEventListener("change", draw);
    new STLLoader().load(canvas.dataset.modelUrl, (geometry) => {
      geometry.computeBoundingSphere();
      const { center, radius } = geometry.boundingSphere;
      const mesh = new THREE.Mesh(geometry, new THREE.MeshStandardMaterial(
        { color: 0xe8dcc0, roughness: 0.6, metalness: 0.0 }));
      scene.add(mesh);
      controls.target.copy(center);
      camera.position.set(center.x, center.y - radius * 3.2, center.z + radius * 0.6);
      camera.near = radius / 100; camera.far = radius * 20;
      camera.updateProjectionMatrix();
      controls.update();
      draw();
      canvas.dataset.rendered = String(geometry.attributes.position.count / 3);
    }, undefined, () => { note.textContent = "The preview could not load the model; the download works."; });
  }
}
