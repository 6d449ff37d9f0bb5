// The 3D preview: the model (binary STL, mm, LPS) drawn with three.js, served by this app.
// A multi-segment job's model (our 3MF of one object per segment, or a zip of one STL per
// segment) is drawn one mesh per segment in its colour, each with a visibility toggle.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { STLLoader } from "three/addons/loaders/STLLoader.js";
import { strFromU8, unzipSync } from "three/addons/libs/fflate.module.js";

const canvas = document.getElementById("preview");
const note = document.getElementById("preview-note");
const failed = () => { note.textContent = "The preview could not load the model; the download works."; };

// The geometry of each object of a 3MF that dicomstl wrote (one <object> per segment, in
// order; vertices in mm, then triangles).
function threemfGeometries(files) {
  const text = strFromU8(files["3D/3dmodel.model"]);
  return text.split("<object ").slice(1).map((chunk) => {
    const xyz = [];
    for (const m of chunk.matchAll(/<vertex x="([^"]+)" y="([^"]+)" z="([^"]+)"\/>/g)) {
      xyz.push(+m[1], +m[2], +m[3]);
    }
    const index = [];
    for (const m of chunk.matchAll(/<triangle v1="(\d+)" v2="(\d+)" v3="(\d+)"\/>/g)) {
      index.push(+m[1], +m[2], +m[3]);
    }
    const geometry = new THREE.BufferGeometry();
    geometry.setAttribute("position", new THREE.Float32BufferAttribute(xyz, 3));
    geometry.setIndex(index);
    geometry.computeVertexNormals();
    return geometry;
  });
}

// One geometry per segment, from the model's bytes.
function segmentGeometries(buffer, segments, format) {
  const files = unzipSync(new Uint8Array(buffer));
  if (format === "3mf") return threemfGeometries(files);
  return segments.map(([name]) => new STLLoader().parse(files[`${name}.stl`].slice().buffer));
}

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
    const material = (color) => new THREE.MeshStandardMaterial({ color, roughness: 0.6, metalness: 0.0 });
    // Aim at the bounding sphere of the meshes, then draw; data-rendered: the triangles.
    const show = (meshes) => {
      const box = new THREE.Box3();
      for (const mesh of meshes) { scene.add(mesh); box.expandByObject(mesh); }
      const sphere = box.getBoundingSphere(new THREE.Sphere());
      const { center, radius } = sphere;
      controls.target.copy(center);
      camera.position.set(center.x, center.y - radius * 3.2, center.z + radius * 0.6);
      camera.near = radius / 100; camera.far = radius * 20;
      camera.updateProjectionMatrix();
      controls.update();
      draw();
      canvas.dataset.rendered = String(meshes.reduce((n, mesh) => n + (mesh.geometry.index
        ? mesh.geometry.index.count : mesh.geometry.attributes.position.count) / 3, 0));
    };
    const segments = canvas.dataset.segments ? JSON.parse(canvas.dataset.segments) : null;
    if (!segments) {
      new STLLoader().load(canvas.dataset.modelUrl,
        (geometry) => show([new THREE.Mesh(geometry, material(0xe8dcc0))]), undefined, failed);
    } else {
      fetch(canvas.dataset.modelUrl)
        .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); return r.arrayBuffer(); })
        .then((buffer) => {
          const geometries = segmentGeometries(buffer, segments, canvas.dataset.modelFormat);
          const meshes = geometries.map((g, i) => new THREE.Mesh(g, material(segments[i][1])));
          const toggles = document.getElementById("segment-toggles");
          segments.forEach(([name, color], i) => {
            const label = document.createElement("label");
            const box = document.createElement("input");
            box.type = "checkbox"; box.checked = true; box.dataset.segment = name;
            box.addEventListener("change", () => { meshes[i].visible = box.checked; draw(); });
            const swatch = document.createElement("span");
            swatch.className = "swatch"; swatch.style.background = color;
            label.append(box, " ", swatch, ` ${name}`);
            toggles.append(label);
          });
          show(meshes);
        })
        .catch(failed);
    }
  }
}
