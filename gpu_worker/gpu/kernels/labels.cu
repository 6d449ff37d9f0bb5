// Island labels on the GPU: helpers for gpu_worker/gpu/volume.py's renumbering.
// First (raster-order) voxel of each label: first[label] = min linear index. first starts at
// a value larger than any index; label 0 (background) is skipped.
extern "C" __global__ void label_first(const int* __restrict__ labels, long long n,
                            unsigned long long* __restrict__ first) {
    const long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const int label = labels[idx];
    if (label > 0) atomicMin(first + label, (unsigned long long)idx);
}
