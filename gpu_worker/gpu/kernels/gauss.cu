// Gaussian smoothing on the GPU, equal to scipy's bit for bit (gpu_worker/gpu/volume.py).
// One pass of scipy.ndimage.correlate1d with a symmetric odd filter (2*half+1 taps),
// mode="nearest", float32 in and out, accumulated in float64 in scipy's order:
// out = in[p] * w[half] + sum over d = half..1 of (in[p-d] + in[p+d]) * w[half-d].
// The array is (n0, n1, n2), C order; axis is 0, 1 or 2.
extern "C" __global__ void gauss_axis(const float* __restrict__ in, float* __restrict__ out,
                           int n0, int n1, int n2, int axis, const double* __restrict__ w,
                           int half) {
    const long long total = (long long)n0 * n1 * n2;
    const long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const long long stride = axis == 0 ? (long long)n1 * n2 : (axis == 1 ? n2 : 1);
    const int len = axis == 0 ? n0 : (axis == 1 ? n1 : n2);
    const int p = (int)((idx / stride) % len);
    const float* line = in + (idx - (long long)p * stride);
    double acc = (double)line[(long long)p * stride] * w[half];
    for (int jj = -half; jj < 0; ++jj) {
        const int lo = max(p + jj, 0), hi = min(p - jj, len - 1);
        acc += ((double)line[(long long)lo * stride] + (double)line[(long long)hi * stride])
               * w[half + jj];
    }
    out[idx] = (float)acc;
}
