// RoIAlign forward and backward CPU kernels: torch.ops.instaseg.roi_align_forward / roi_align_backward.
//
// Sample positions and bilinear weights follow torchvision's CPU kernel operation by operation, so outputs agree
// to float rounding. Unlike it, both passes run on all threads (at::parallel_for): the forward pass splits the
// (roi, channel) pairs, the backward pass splits channels, so no two threads ever add into the same gradient
// cell (no atomics, deterministic results). The Python side (instaseg/ops/roi_align.py) validates arguments and
// wraps both kernels in an autograd Function.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace instaseg {
namespace {

// One sample point: its four bilinear neighbours as offsets in an H*W plane and their weights.
// An outside point (more than one cell off the map) has pos[0] == -1 and is skipped.
template <typename T>
struct Sample {
  int64_t pos[4];
  T w[4];
};

// The samples of one roi, bin after bin (row-major over the pooled grid), per_bin samples per bin.
template <typename T>
struct RoiSamples {
  int64_t batch_index = 0;
  int64_t per_bin = 0;
  T count = 1;  // divisor of each bin's sum: max(per_bin, 1)
  std::vector<Sample<T>> samples;
};

template <typename T>
Sample<T> bilinear_sample(T y, T x, int64_t height, int64_t width) {
  Sample<T> s{};
  // Written so that NaN coordinates also count as outside.
  if (!(y >= -1 && y <= height && x >= -1 && x <= width)) {
    s.pos[0] = -1;
    return s;
  }
  y = std::max<T>(y, 0);
  x = std::max<T>(x, 0);
  int64_t y_low = static_cast<int64_t>(y);
  int64_t x_low = static_cast<int64_t>(x);
  int64_t y_high = y_low + 1;
  int64_t x_high = x_low + 1;
  if (y_low >= height - 1) {
    y_low = y_high = height - 1;
    y = static_cast<T>(y_low);
  }
  if (x_low >= width - 1) {
    x_low = x_high = width - 1;
    x = static_cast<T>(x_low);
  }
  const T ly = y - y_low, lx = x - x_low;
  const T hy = 1 - ly, hx = 1 - lx;
  s.pos[0] = y_low * width + x_low;
  s.pos[1] = y_low * width + x_high;
  s.pos[2] = y_high * width + x_low;
  s.pos[3] = y_high * width + x_high;
  s.w[0] = hy * hx;
  s.w[1] = hy * lx;
  s.w[2] = ly * hx;
  s.w[3] = ly * lx;
  return s;
}

// Fills `out` with the sample points of roi `roi` = [batch_index, x1, y1, x2, y2] (input-image pixels).
template <typename T>
void compute_roi_samples(const T* roi, T spatial_scale, int64_t height, int64_t width, int64_t pooled_h,
                         int64_t pooled_w, int64_t sampling_ratio, bool aligned, RoiSamples<T>& out) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start_w = roi[1] * spatial_scale - offset;
  const T start_h = roi[2] * spatial_scale - offset;
  const T end_w = roi[3] * spatial_scale - offset;
  const T end_h = roi[4] * spatial_scale - offset;
  T roi_w = end_w - start_w;
  T roi_h = end_h - start_h;
  if (!aligned) {
    roi_w = std::max<T>(roi_w, 1);
    roi_h = std::max<T>(roi_h, 1);
  }
  const T bin_h = roi_h / static_cast<T>(pooled_h);
  const T bin_w = roi_w / static_cast<T>(pooled_w);
  // Adaptive grid: ceil(roi size / output size); an empty or inverted aligned roi has no samples (output 0).
  const int64_t grid_h = sampling_ratio > 0
      ? sampling_ratio : static_cast<int64_t>(std::max<T>(std::ceil(roi_h / static_cast<T>(pooled_h)), 0));
  const int64_t grid_w = sampling_ratio > 0
      ? sampling_ratio : static_cast<int64_t>(std::max<T>(std::ceil(roi_w / static_cast<T>(pooled_w)), 0));

  out.batch_index = static_cast<int64_t>(roi[0]);
  out.per_bin = grid_h * grid_w;
  out.count = static_cast<T>(std::max<int64_t>(out.per_bin, 1));
  out.samples.resize(pooled_h * pooled_w * out.per_bin);
  Sample<T>* s = out.samples.data();
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      for (int64_t iy = 0; iy < grid_h; ++iy) {
        const T y = start_h + ph * bin_h + static_cast<T>(iy + .5f) * bin_h / static_cast<T>(grid_h);
        for (int64_t ix = 0; ix < grid_w; ++ix) {
          const T x = start_w + pw * bin_w + static_cast<T>(ix + .5f) * bin_w / static_cast<T>(grid_w);
          *s++ = bilinear_sample<T>(y, x, height, width);
        }
      }
    }
  }
}

void check_rois(const at::Tensor& rois, int64_t batch_size, const char* op) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be (K, 5), got ", rois.sizes());
  const at::Tensor index = rois.select(1, 0);
  TORCH_CHECK(rois.size(0) == 0 || (index.min().item<double>() >= 0 && index.max().item<double>() < batch_size),
              op, ": roi batch indices must lie in [0, ", batch_size, ")");
}

template <typename T>
void forward_impl(const T* input, const T* rois, T* output, int64_t num_rois, int64_t channels, int64_t height,
                  int64_t width, int64_t pooled_h, int64_t pooled_w, T spatial_scale, int64_t sampling_ratio,
                  bool aligned) {
  const int64_t bins = pooled_h * pooled_w;
  const int64_t plane = height * width;
  // Consecutive (roi, channel) pairs share the roi's samples: each thread recomputes them once per roi it meets.
  at::parallel_for(0, num_rois * channels, 1, [&](int64_t begin, int64_t end) {
    RoiSamples<T> roi;
    int64_t current = -1;
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = pair / channels;
      const int64_t c = pair % channels;
      if (n != current) {
        compute_roi_samples<T>(rois + n * 5, spatial_scale, height, width, pooled_h, pooled_w, sampling_ratio,
                               aligned, roi);
        current = n;
      }
      const T* in = input + (roi.batch_index * channels + c) * plane;
      // The next channel's plane at the same points: prefetching its two rows per sample overlaps the memory
      // latency that otherwise dominates on large maps (every plane of a big level comes from DRAM).
      const T* next = c + 1 < channels ? in + plane : in;
      T* out = output + pair * bins;
      const Sample<T>* s = roi.samples.data();
      for (int64_t bin = 0; bin < bins; ++bin) {
        T sum = 0;
        for (int64_t i = 0; i < roi.per_bin; ++i, ++s) {
          if (s->pos[0] < 0) continue;
          __builtin_prefetch(next + s->pos[0]);
          __builtin_prefetch(next + s->pos[2]);
          sum += s->w[0] * in[s->pos[0]] + s->w[1] * in[s->pos[1]] + s->w[2] * in[s->pos[2]] +
                 s->w[3] * in[s->pos[3]];
        }
        out[bin] = sum / roi.count;
      }
    }
  });
}

template <typename T>
void backward_impl(const T* grad_output, const T* rois, T* grad_input, int64_t num_rois, int64_t channels,
                   int64_t height, int64_t width, int64_t pooled_h, int64_t pooled_w, T spatial_scale,
                   int64_t sampling_ratio, bool aligned) {
  const int64_t bins = pooled_h * pooled_w;
  const int64_t plane = height * width;
  // Each thread owns a range of channels of grad_input: every roi's samples are computed once per thread.
  at::parallel_for(0, channels, 1, [&](int64_t c_begin, int64_t c_end) {
    RoiSamples<T> roi;
    for (int64_t n = 0; n < num_rois; ++n) {
      compute_roi_samples<T>(rois + n * 5, spatial_scale, height, width, pooled_h, pooled_w, sampling_ratio,
                             aligned, roi);
      if (roi.per_bin == 0) continue;
      for (int64_t c = c_begin; c < c_end; ++c) {
        const T* grad = grad_output + (n * channels + c) * bins;
        T* in = grad_input + (roi.batch_index * channels + c) * plane;
        T* next = c + 1 < c_end ? in + plane : in;  // prefetched for writing, as in the forward pass
        const Sample<T>* s = roi.samples.data();
        for (int64_t bin = 0; bin < bins; ++bin) {
          const T g = grad[bin] / roi.count;
          for (int64_t i = 0; i < roi.per_bin; ++i, ++s) {
            if (s->pos[0] < 0) continue;
            __builtin_prefetch(next + s->pos[0], 1);
            __builtin_prefetch(next + s->pos[2], 1);
            in[s->pos[0]] += s->w[0] * g;
            in[s->pos[1]] += s->w[1] * g;
            in[s->pos[2]] += s->w[2] * g;
            in[s->pos[3]] += s->w[3] * g;
          }
        }
      }
    }
  });
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "roi_align_forward: input must be (B, C, H, W), got ", input.sizes());
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(), "roi_align_forward: input is ", input.scalar_type(),
              " but rois are ", rois.scalar_type());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "roi_align_forward: output size must be positive");
  check_rois(rois, input.size(0), "roi_align_forward");
  const at::Tensor in = input.contiguous();
  const at::Tensor boxes = rois.contiguous();
  const int64_t num_rois = boxes.size(0), channels = in.size(1);
  at::Tensor output = at::empty({num_rois, channels, pooled_height, pooled_width}, in.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "roi_align_forward", [&] {
    forward_impl<scalar_t>(in.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
                           num_rois, channels, in.size(2), in.size(3), pooled_height, pooled_width,
                           static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned) {
  TORCH_CHECK(grad_output.scalar_type() == rois.scalar_type(), "roi_align_backward: grad_output is ",
              grad_output.scalar_type(), " but rois are ", rois.scalar_type());
  check_rois(rois, batch_size, "roi_align_backward");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == rois.size(0) && grad_output.size(1) == channels &&
                  grad_output.size(2) == pooled_height && grad_output.size(3) == pooled_width,
              "roi_align_backward: grad_output must be (K, C, h, w) = (", rois.size(0), ", ", channels, ", ",
              pooled_height, ", ", pooled_width, "), got ", grad_output.sizes());
  const at::Tensor grad = grad_output.contiguous();
  const at::Tensor boxes = rois.contiguous();
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward", [&] {
    backward_impl<scalar_t>(grad.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
                            boxes.size(0), channels, height, width, pooled_height, pooled_width,
                            static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(instaseg, m) {
  m.def(
      "roi_align_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad_output, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, int sampling_ratio, "
      "bool aligned) -> Tensor");
}

TORCH_LIBRARY_IMPL(instaseg, CPU, m) {
  m.impl("roi_align_forward", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace instaseg
