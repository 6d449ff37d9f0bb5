// Binary STL packing on the GPU: the same bytes as gpu_worker/stl.py (see gpu_worker/gpu/stl.py).
// Binary STL records (50 bytes: normal, three vertices, a zero attribute) for every triangle,
// the normal computed in float32 exactly as gpu_worker/stl.py does. out: the bytes after the
// 84-byte header, which is 2-byte aligned per record, so records are written as 16-bit words.
extern "C" __global__ void stl_pack(const float* __restrict__ verts,
                                    const int* __restrict__ faces, long long n_faces, unsigned short* __restrict__ out) {
    const long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= n_faces) return;
    const float* p0 = verts + 3LL * faces[3 * t];
    const float* p1 = verts + 3LL * faces[3 * t + 1];
    const float* p2 = verts + 3LL * faces[3 * t + 2];
    const float ux = p1[0] - p0[0], uy = p1[1] - p0[1], uz = p1[2] - p0[2];
    const float vx = p2[0] - p0[0], vy = p2[1] - p0[1], vz = p2[2] - p0[2];
    float nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
    const float norm = sqrtf(nx * nx + ny * ny + nz * nz);
    if (norm > 0.0f) { nx /= norm; ny /= norm; nz /= norm; }
    const float rec[12] = {nx, ny, nz, p0[0], p0[1], p0[2], p1[0], p1[1], p1[2],
                           p2[0], p2[1], p2[2]};
    unsigned short* o = out + 25 * t;
    for (int n = 0; n < 12; ++n) {
        const unsigned int bits = __float_as_uint(rec[n]);
        o[2 * n] = (unsigned short)(bits & 0xffffu);
        o[2 * n + 1] = (unsigned short)(bits >> 16);
    }
    o[24] = 0;
}
