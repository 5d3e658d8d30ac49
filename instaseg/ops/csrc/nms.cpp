// Greedy non-maximum suppression on CPU: `instaseg::nms` and `instaseg::batched_nms`.
//
// Same decisions as torchvision's CPU kernel: boxes visited by decreasing score (ties by index), IoU computed
// in the boxes' dtype as inter / (area_i + area_j - inter), a box dropped when that IoU is > the threshold
// compared in double. So the kept indices are identical; see greedy_nms for why it is faster.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace instaseg {
namespace {

// batched_nms runs its categories in parallel only from this many boxes on (a heuristic: below it one thread
// takes a few ms at most).
constexpr int64_t kParallelMinBoxes = 16384;

// Smallest value of scalar_t that is strictly greater than `threshold`: for any scalar_t x,
// `double(x) > threshold` <=> `x >= strict_upper(threshold)`, so the inner loop compares in scalar_t.
template <typename scalar_t>
scalar_t strict_upper(double threshold) {
  auto rounded = static_cast<scalar_t>(threshold);
  if (static_cast<double>(rounded) <= threshold) {
    rounded = std::nextafter(rounded, std::numeric_limits<scalar_t>::infinity());
  }
  return rounded;
}

// Greedy NMS over `count` boxes given in the order to visit them (decreasing score). `rank[k]` is the
// caller's label for the k-th box; the labels of the kept boxes are appended to `kept` in visiting order.
//
// The candidates still alive sit at [first, alive) of structure-of-arrays copies, in visiting order. Each
// kept box first flags the boxes it suppresses in a branch-free loop the compiler vectorises, then the
// survivors are compacted (only from the first flagged one on), so later passes never revisit suppressed
// boxes. This is about 4x faster than torchvision's loop over all boxes with an "already suppressed" branch.
template <typename scalar_t>
void greedy_nms(
    const scalar_t* boxes,  // (N, 4) row-major x1y1x2y2, all boxes of the call
    const int64_t* visit,   // (count,) rows of `boxes` in visiting order
    const int64_t* rank,    // (count,) label reported for each visited box
    int64_t count,
    scalar_t threshold_up,
    std::vector<int64_t>& kept) {
  std::vector<scalar_t> x1(count), y1(count), x2(count), y2(count), area(count);
  std::vector<int64_t> label(rank, rank + count);
  std::vector<uint8_t> drop(count);
  for (int64_t k = 0; k < count; ++k) {
    const scalar_t* b = boxes + 4 * visit[k];
    x1[k] = b[0];
    y1[k] = b[1];
    x2[k] = b[2];
    y2[k] = b[3];
    area[k] = (b[2] - b[0]) * (b[3] - b[1]);
  }
  int64_t alive = count;
  for (int64_t first = 0; first < alive; ++first) {
    kept.push_back(label[first]);
    const scalar_t ix1 = x1[first], iy1 = y1[first], ix2 = x2[first], iy2 = y2[first], iarea = area[first];
    int64_t dropped = 0;
    for (int64_t j = first + 1; j < alive; ++j) {
      const scalar_t w = std::max(std::min(ix2, x2[j]) - std::max(ix1, x1[j]), scalar_t(0));
      const scalar_t h = std::max(std::min(iy2, y2[j]) - std::max(iy1, y1[j]), scalar_t(0));
      const scalar_t inter = w * h;
      const scalar_t iou = inter / (iarea + area[j] - inter);
      drop[j] = iou >= threshold_up;
      dropped += drop[j];
    }
    if (dropped == 0) {
      continue;
    }
    int64_t write = first + 1;
    while (!drop[write]) {
      ++write;
    }
    for (int64_t j = write; j < alive; ++j) {
      x1[write] = x1[j];
      y1[write] = y1[j];
      x2[write] = x2[j];
      y2[write] = y2[j];
      area[write] = area[j];
      label[write] = label[j];
      write += 1 - drop[j];
    }
    alive = write;
  }
}

void check_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.device().is_cpu() && scores.device().is_cpu(), "instaseg::nms: CPU tensors expected");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "instaseg::nms: boxes must be (N, 4), got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "instaseg::nms: scores must be (N,) with N = ", boxes.size(0), ", got ", scores.sizes());
}

// Indices of `scores` by decreasing score; equal scores keep their index order.
at::Tensor score_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores, double iou_threshold) {
  check_inputs(boxes_in, scores);
  const int64_t n = boxes_in.size(0);
  if (n == 0) {
    return at::empty({0}, boxes_in.options().dtype(at::kLong));
  }
  const at::Tensor boxes = boxes_in.contiguous();
  const at::Tensor order = score_order(scores).contiguous();
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "instaseg_nms", [&] {
    const int64_t* visit = order.data_ptr<int64_t>();
    const scalar_t threshold_up = strict_upper<scalar_t>(iou_threshold);
    greedy_nms<scalar_t>(boxes.data_ptr<scalar_t>(), visit, visit, n, threshold_up, kept);
  });
  return at::tensor(kept, boxes.options().dtype(at::kLong));
}

// NMS within each class of `idxs`: boxes are grouped by class (each group in decreasing score order), and
// the kept boxes come back sorted by decreasing score (ties by index) across all classes.
at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_inputs(boxes_in, scores);
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes_in.size(0),
              "instaseg::batched_nms: idxs must be (N,) with N = ", boxes_in.size(0), ", got ", idxs.sizes());
  const int64_t n = boxes_in.size(0);
  if (n == 0) {
    return at::empty({0}, boxes_in.options().dtype(at::kLong));
  }
  const at::Tensor boxes = boxes_in.contiguous();
  const at::Tensor order = score_order(scores).contiguous();
  // Stable sort of the score order by class: each class becomes one run, still in decreasing score order.
  const at::Tensor classes = idxs.to(at::kLong).index_select(0, order);
  const at::Tensor by_class = std::get<1>(classes.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor visit_t = order.index_select(0, by_class).contiguous();  // box rows, grouped by class
  const at::Tensor rank_t = by_class.contiguous();                          // their positions in score order
  const int64_t* visit = visit_t.data_ptr<int64_t>();
  const int64_t* rank = rank_t.data_ptr<int64_t>();
  const at::Tensor sorted_classes = classes.index_select(0, by_class).contiguous();
  const int64_t* cls = sorted_classes.data_ptr<int64_t>();

  std::vector<int64_t> group_start{0};
  for (int64_t k = 1; k < n; ++k) {
    if (cls[k] != cls[k - 1]) {
      group_start.push_back(k);
    }
  }
  group_start.push_back(n);
  const int64_t groups = static_cast<int64_t>(group_start.size()) - 1;

  // One byte per position in score order; groups write disjoint bytes.
  std::vector<uint8_t> keep_at_rank(n, 0);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "instaseg_batched_nms", [&] {
    const scalar_t* data = boxes.data_ptr<scalar_t>();
    const scalar_t threshold_up = strict_upper<scalar_t>(iou_threshold);
    // Small inputs run on one thread: 5000 boxes in 80 classes take ~1 ms, while waiting for a second
    // OpenMP thread on a loaded 2-core machine was measured at up to 20 ms per call.
    const int64_t grain = n < kParallelMinBoxes ? groups : 1;
    at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> kept;
      for (int64_t g = begin; g < end; ++g) {
        kept.clear();
        const int64_t start = group_start[g];
        const int64_t count = group_start[g + 1] - start;
        greedy_nms<scalar_t>(data, visit + start, rank + start, count, threshold_up, kept);
        for (const int64_t r : kept) {
          keep_at_rank[r] = 1;
        }
      }
    });
  });
  const int64_t* order_ptr = order.data_ptr<int64_t>();
  std::vector<int64_t> result;
  for (int64_t r = 0; r < n; ++r) {
    if (keep_at_rank[r]) {
      result.push_back(order_ptr[r]);
    }
  }
  return at::tensor(result, boxes.options().dtype(at::kLong));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(instaseg, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(instaseg, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace instaseg
