// fp32 2-D/3-D convolution for XLA:CPU through oneDNN (its brgemm convolution, the one torch runs on x86).
//
// Why: XLA:CPU's convolutions reach 145-170 GFLOP/s at the VAE's 3x3(x3) layers on a 2-core AVX-512 machine,
// oneDNN's 160-215 (experiments/official/cpu_backends.py), and the VAE decode is almost all convolution.
//
// Wan22CpuConv: y = conv(x, w) for channels-last x [N, *S, C], w [*K, C, O], y [N, *S', O] with S of rank 2
// or 3, per-axis strides and explicit low/high zero padding (XLA's conv_general_dilated without dilation or
// groups). The primitive wants its weights in a blocked layout of its own; they are reordered on every call into
// a buffer kept per thread. (Reordering in a call of its own, which XLA would hoist out of the decode's frame
// loop, was slower: XLA gives its output fresh pages on every run, and faulting them in costs more than the
// reorder.) Primitives are created once per shape and kept.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

struct Primitive {
  dnnl::convolution_forward conv;
  dnnl::reorder to_blocked;
  memory::desc src, plain_weights, weights, dst;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The convolution in XLA's terms: x [N, *S, C], w [*K, C, O]; the output shape follows.
struct Shape {
  int rank = 0;
  std::vector<int64_t> x, w, strides, lo, hi;

  std::vector<int64_t> Out() const {
    std::vector<int64_t> y{x[0]};
    for (int i = 0; i < rank; ++i) y.push_back((x[i + 1] + lo[i] + hi[i] - w[i]) / strides[i] + 1);
    y.push_back(w[rank + 1]);
    return y;
  }
  std::string Check() const {
    if (rank != 2 && rank != 3) return "expected 2 or 3 spatial axes";
    const size_t n = static_cast<size_t>(rank);
    if (x.size() != n + 2 || w.size() != x.size() || strides.size() != n || lo.size() != n || hi.size() != n)
      return "expected x [N, *S, C], w [*K, C, O], and strides and paddings per spatial axis";
    if (w[rank] != x[rank + 1]) return "the input's channels do not match the kernel's";
    for (int i = 0; i < rank; ++i)
      if (strides[i] < 1 || lo[i] < 0 || hi[i] < 0 || x[i + 1] + lo[i] + hi[i] < w[i])
        return "a stride, padding or kernel size does not fit the input";
    return "";
  }
};

std::shared_ptr<Primitive> Get(const Shape& s) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, std::shared_ptr<Primitive>> cache;
  std::vector<int64_t> key{s.rank};
  for (auto* v : {&s.x, &s.w, &s.strides, &s.lo, &s.hi}) key.insert(key.end(), v->begin(), v->end());
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  // oneDNN's logical order is N, C, *S for activations and O, I, *K for weights
  const int r = s.rank;
  const auto y = s.Out();
  memory::dims xd{s.x[0], s.x[r + 1]}, yd{y[0], y[r + 1]}, wd{s.w[r + 1], s.w[r]};
  for (int i = 0; i < r; ++i) {
    xd.push_back(s.x[i + 1]);
    yd.push_back(y[i + 1]);
    wd.push_back(s.w[i]);
  }
  using tag = memory::format_tag;
  const tag act = r == 3 ? tag::ndhwc : tag::nhwc, plain = r == 3 ? tag::dhwio : tag::hwio;
  auto p = std::make_shared<Primitive>();
  p->src = memory::desc(xd, memory::data_type::f32, act);
  p->dst = memory::desc(yd, memory::data_type::f32, act);
  p->plain_weights = memory::desc(wd, memory::data_type::f32, plain);
  dnnl::primitive_attr attr;
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);  // fp32 is the parity mode: no bf16/tf32 shortcuts
  auto pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, p->src,
      memory::desc(wd, memory::data_type::f32, tag::any), p->dst, s.strides, s.lo, s.hi, attr);
  p->weights = pd.weights_desc();
  p->conv = dnnl::convolution_forward(pd);
  p->to_blocked = dnnl::reorder(memory(p->plain_weights, Engine()), memory(p->weights, Engine()));
  cache.emplace(std::move(key), p);
  return p;
}

// oneDNN runs on its OpenMP team (all cores). XLA may start independent convolutions concurrently: two teams at
// once would put twice the threads on the cores, so one call runs at a time.
std::mutex& ExecuteMutex() {
  static std::mutex mutex;
  return mutex;
}

template <class D>  // an FFI span of dimensions or attribute values
std::vector<int64_t> Vec(const D& values) { return {values.begin(), values.end()}; }

ffi::Error Fail(const std::string& what) { return ffi::Error::InvalidArgument("wan22 cpu_conv: " + what); }

ffi::Error Conv(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  Shape s{static_cast<int>(x.dimensions().size()) - 2, Vec(x.dimensions()), Vec(w.dimensions()), Vec(strides),
          Vec(lo), Vec(hi)};
  if (auto why = s.Check(); !why.empty()) return Fail(why);
  if (Vec(y->dimensions()) != s.Out()) return Fail("the output shape does not match the convolution");
  try {
    auto p = Get(s);
    std::lock_guard<std::mutex> lock(ExecuteMutex());
    thread_local std::vector<char> blocked;  // grown as needed, kept between calls (its pages stay mapped)
    if (blocked.size() < p->weights.get_size()) blocked.resize(p->weights.get_size());
    dnnl::stream stream(Engine());
    memory src(p->src, Engine(), const_cast<float*>(x.typed_data()));
    memory plain(p->plain_weights, Engine(), const_cast<float*>(w.typed_data()));
    memory weights(p->weights, Engine(), blocked.data());
    memory dst(p->dst, Engine(), y->typed_data());
    p->to_blocked.execute(stream, plain, weights);
    p->conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("wan22 cpu_conv: oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Wan22CpuConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding_lo")
                                  .Attr<ffi::Span<const int64_t>>("padding_hi"));
