// fp32 matmul and attention for XLA:CPU through a BLAS sgemm (MKL's, single-threaded), split over XLA's own
// intra-op threads.
//
// Why: on x86 CPUs MKL's sgemm runs 1.25-1.3x faster than XLA's dot lowerings, and torch (the official code)
// gets it for free. A BLAS with its own thread pool would spin against XLA's threads; a single-threaded BLAS
// called from XLA's pool does not.
//
// Wan22CpuSgemm: c[b] = a[b] @ op(w[b]) for row-major a [B, M, K], w [B or 1, K, N] (or [B or 1, N, K] with
// transpose_w), c [B, M, N]. The work is cut into whole batch entries when they share out evenly over the
// threads, else into row blocks of each product too; every piece is one sgemm call, so results do not depend on
// thread timing.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                          const float*, const int*, const float*, const int*, const float*, float*, const int*);
static sgemm_fn g_sgemm = nullptr;

extern "C" void wan22_set_sgemm(void* fn) { g_sgemm = reinterpret_cast<sgemm_fn>(fn); }

namespace {

// Runs job->Run(piece, scratch) for every piece on the caller and up to threads - 1 of XLA's pool threads.
// Helpers hold the job by value: one that starts after the caller has finished every piece finds none left.
template <class J>
void RunPieces(ffi::ThreadPool& pool, std::shared_ptr<J> job, int64_t pieces) {
  job->pieces = pieces;
  auto work = [job]() {
    typename J::Scratch scratch;
    for (int64_t p; (p = job->next.fetch_add(1)) < job->pieces;) {
      job->Run(p, scratch);
      job->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), pieces) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work]() { work(); });  // Schedule takes a temporary
  work();
  while (job->done.load() < pieces) std::this_thread::yield();
}

struct Job {
  struct Scratch {};
  const float* a;
  const float* w;
  float* c;
  int64_t batch, w_batch;
  int m, n, k;
  bool transpose_w;
  int64_t pieces, rows_split;
  std::atomic<int64_t> next{0}, done{0};

  void Run(int64_t p, Scratch&) const {
    const int64_t b = p / rows_split, r = p % rows_split;
    const int m0 = static_cast<int>(m * r / rows_split);
    const int rows = static_cast<int>(m * (r + 1) / rows_split) - m0;
    if (rows > 0) {
      const float one = 1.f, zero = 0.f;
      // column-major view of row-major data: C^T [N, rows] = op(W)^T [N, K] * A^T [K, rows]
      const int ldw = transpose_w ? k : n, lda = k, ldc = n;
      const float* ap = a + b * int64_t{m} * k + int64_t{m0} * k;
      const float* wp = w + (w_batch == 1 ? 0 : b) * int64_t{k} * n;
      float* cp = c + b * int64_t{m} * n + int64_t{m0} * n;
      g_sgemm(transpose_w ? "T" : "N", "N", &n, &rows, &k, &one, wp, &ldw, ap, &lda, &zero, cp, &ldc);
    }
  }
};

ffi::Error Sgemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> w,
                 ffi::ResultBuffer<ffi::F32> c, bool transpose_w) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("wan22 cpu_sgemm: no sgemm function was set");
  auto ad = a.dimensions(), wd = w.dimensions(), cd = c->dimensions();
  if (ad.size() < 2 || wd.size() < 2 || cd.size() != ad.size())
    return ffi::Error::InvalidArgument("wan22 cpu_sgemm: operands must be [..., M, K] and [..., K, N]");
  auto job = std::make_shared<Job>();
  job->a = a.typed_data();
  job->w = w.typed_data();
  job->c = c->typed_data();
  job->batch = 1;
  for (size_t i = 0; i + 2 < cd.size(); ++i) job->batch *= cd[i];
  job->w_batch = 1;
  for (size_t i = 0; i + 2 < wd.size(); ++i) job->w_batch *= wd[i];
  job->m = static_cast<int>(cd[cd.size() - 2]);
  job->n = static_cast<int>(cd[cd.size() - 1]);
  job->k = static_cast<int>(ad[ad.size() - 1]);
  job->transpose_w = transpose_w;
  if (job->w_batch != 1 && job->w_batch != job->batch)
    return ffi::Error::InvalidArgument("wan22 cpu_sgemm: the weight's batch must be 1 or the input's");
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // whole products when they share out evenly; else row blocks too (of at least 64 rows, to keep a kernel busy)
  job->rows_split =
      job->batch % threads == 0 ? 1 : std::max<int64_t>(1, std::min<int64_t>(threads, job->m / 64));
  RunPieces(pool, job, job->batch * job->rows_split);
  return ffi::Error::Success();
}

using Buffer4 = ffi::Buffer<ffi::F32, 4>;  // aliases: a template's comma would split the handler macro's arguments
using Result4 = ffi::ResultBuffer<ffi::F32, 4>;
using Buffer2 = ffi::Buffer<ffi::F32, 2>;

// Wan22CpuAttention, fused attention for one (example, head, block of query rows) at a time:
// logits = scale * Q K^T into a buffer that stays in this core's cache, per-key bias (or -inf: a masked key,
// whose logit becomes -FLT_MAX as in the reference), row max, p = exp(logits - max), O = P V, O /= rowsum(p):
// the "xla" implementation's blocked algorithm, with the logits never leaving the cache.
// q [B, Lq, H, d], k and v [B, Lk, H, d], out like q, bias [Bb, Lk] with Bb 1 or B.

// exp(x) for x <= 0, vectorisable: Cephes' expf (range reduction by ln 2, degree-5 polynomial; 5e-7 relative);
// below -87.3 (a key 87 logits under the row's max, or masked) the weight is 0.
static inline float ExpNonPositive(float x) {
  const float xc = x < -87.3f ? -87.3f : x;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return x < -87.3f ? 0.0f : e * __builtin_bit_cast(float, bits);
}

struct AttentionJob {
  using Scratch = std::vector<float>;  // one piece's logits, reused by a thread's pieces
  const float *q, *k, *v, *bias;
  float* out;
  int64_t batch, heads, lq, lk, d, bias_batch, block, blocks, pieces;
  float scale;
  std::atomic<int64_t> next{0}, done{0};

  void Run(int64_t p, Scratch& logits) const {
    const int64_t qb = p % blocks, bh = p / blocks, h = bh % heads, b = bh / heads;
    const int rows = static_cast<int>(std::min(block, lq - qb * block));
    const int nk = static_cast<int>(lk), nd = static_cast<int>(d), ld = static_cast<int>(heads * d);
    logits.resize(static_cast<size_t>(rows) * nk);
    float* s = logits.data();
    const float* qp = q + ((b * lq + qb * block) * heads + h) * d;
    const float* kp = k + (b * lk * heads + h) * d;
    const float* vp = v + (b * lk * heads + h) * d;
    float* op = out + ((b * lq + qb * block) * heads + h) * d;
    const float* bp = bias + (bias_batch == 1 ? 0 : b) * lk;
    const float one = 1.f, zero = 0.f;
    // column-major views: S^T [Lk, rows] = K [Lk, d] Q^T;  O^T [d, rows] = V^T [d, Lk] P^T
    g_sgemm("T", "N", &nk, &rows, &nd, &scale, kp, &ld, qp, &ld, &zero, s, &nk);
    std::vector<float> inv(rows);
    for (int i = 0; i < rows; ++i) {
      float* row = s + static_cast<int64_t>(i) * nk;
      float m = -FLT_MAX;
#pragma omp simd reduction(max : m)
      for (int j = 0; j < nk; ++j) {
        const float x = bp[j] == -INFINITY ? -FLT_MAX : row[j] + bp[j];
        row[j] = x;
        m = std::max(m, x);
      }
      float sum = 0.f;
      // vectorised only with -fno-trapping-math (see cpu_sgemm.py); the sum's order is the vector lanes'
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < nk; ++j) {
        const float e = ExpNonPositive(row[j] - m);
        row[j] = e;
        sum += e;
      }
      inv[i] = 1.f / sum;
    }
    g_sgemm("N", "N", &nd, &rows, &nk, &one, vp, &ld, s, &nk, &zero, op, &ld);
    for (int i = 0; i < rows; ++i) {
      float* o = op + static_cast<int64_t>(i) * ld;
      for (int j = 0; j < nd; ++j) o[j] *= inv[i];
    }
  }
};

ffi::Error Attention(ffi::ThreadPool pool, Buffer4 q, Buffer4 k, Buffer4 v, Buffer2 bias,
                     Result4 out, float scale, int64_t block) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("wan22 cpu_sgemm: no sgemm function was set");
  auto qd = q.dimensions(), kd = k.dimensions(), bd = bias.dimensions();
  auto job = std::make_shared<AttentionJob>();
  job->q = q.typed_data();
  job->k = k.typed_data();
  job->v = v.typed_data();
  job->bias = bias.typed_data();
  job->out = out->typed_data();
  job->batch = qd[0];
  job->lq = qd[1];
  job->heads = qd[2];
  job->d = qd[3];
  job->lk = kd[1];
  job->bias_batch = bd[0];
  job->block = std::max<int64_t>(1, block);
  job->blocks = (job->lq + job->block - 1) / job->block;
  job->scale = scale;
  RunPieces(pool, job, job->batch * job->heads * job->blocks);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Wan22CpuAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buffer4>()
                                  .Arg<Buffer4>()
                                  .Arg<Buffer4>()
                                  .Arg<Buffer2>()
                                  .Ret<Buffer4>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Wan22CpuSgemm, Sgemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_w"));
