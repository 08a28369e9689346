// corenet-train's C++ shim over libtorch: c10d process groups (Gloo on CPU, NCCL on GPU when
// built with -DUSE_C10D_NCCL) and the multi-tensor ops tch does not bind (`_fused_adamw_`,
// `_foreach_norm`). See ../shared/docs/toolchain.md §5-§6.
//
// Conventions for every `extern "C"` entry point:
// * the body runs inside try/catch, so no C++ exception ever crosses the FFI boundary;
// * the return value is nullptr on success, or a malloc'd NUL-terminated error message that the
//   caller releases with `shim_free`;
// * a tensor crosses as `at::Tensor*` (tch's `*mut C_tensor`): copying the handle shares the
//   storage, so in-place collectives update the caller's tensor.

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/headeronly/version.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

struct Dist {
  c10::intrusive_ptr<c10d::Store> tcp;   // the rendezvous store (rank 0 hosts the server)
  c10::intrusive_ptr<c10d::Store> user;  // PrefixStore for the caller's own keys
  c10::intrusive_ptr<c10d::Backend> pg;
  int rank;
  int world;
};

char* dup_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// Runs `f`, turning any exception into an error message.
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_string(e.what());
  } catch (...) {
    return dup_string("unknown C++ exception");
  }
}

Dist& dist(void* h) {
  if (h == nullptr) {
    throw std::invalid_argument("process group handle is null (already destroyed?)");
  }
  return *static_cast<Dist*>(h);
}

const at::Tensor& tensor(const void* p) {
  if (p == nullptr) {
    throw std::invalid_argument("null tensor pointer");
  }
  const at::Tensor& t = *static_cast<const at::Tensor*>(p);
  if (!t.defined()) {
    throw std::invalid_argument("undefined tensor");
  }
  return t;
}

std::vector<at::Tensor> tensors(const void* const* ps, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    v.push_back(tensor(ps[i]));
  }
  return v;
}

// reduce op codes shared with Rust: 0 = sum, 1 = average (sum, then divide by the world size).
void finish_reduce(Dist& d, at::Tensor& t, int op) {
  if (op == 1) {
    t.div_(static_cast<double>(d.world));
  } else if (op != 0) {
    throw std::invalid_argument("unknown reduce op code " + std::to_string(op));
  }
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

}  // namespace

extern "C" {

void shim_free(void* p) {
  std::free(p);
}

// backend: 0 = gloo, 1 = nccl (only when compiled with USE_C10D_NCCL). `device_index` is the
// CUDA device NCCL uses (LOCAL_RANK); ignored by gloo.
char* shim_dist_init(const char* addr, int port, int rank, int world, int64_t timeout_ms,
                     int backend, int device_index, void** out) {
  return guarded([&] {
    *out = nullptr;
    if (port <= 0 || port > 65535) {
      throw std::invalid_argument("port " + std::to_string(port) + " is outside 1..65535");
    }
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    // Under torchrun the agent already serves the store on MASTER_PORT and says so; rank 0
    // hosting a second one would fail to bind and log an alarming (harmless) error line.
    const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    const bool agent_serves = agent_store != nullptr && std::string(agent_store) == "True";
    o.isServer = rank == 0 && !agent_serves;
    o.numWorkers = static_cast<std::size_t>(world);
    o.waitWorkers = true;
    o.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), o);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>("corenet_pg/0", tcp);
    auto user_store = c10::make_intrusive<c10d::PrefixStore>("corenet_user", tcp);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && ifname[0] != '\0') {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, rank, world, opts);
    } else if (backend == 1) {
#ifdef USE_C10D_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, rank, world, opts);
#else
      (void)device_index;
      throw std::invalid_argument(
          "the nccl backend was not compiled in (build corenet-train with the `nccl` feature)");
#endif
    } else {
      throw std::invalid_argument("unknown backend code " + std::to_string(backend));
    }
    *out = new Dist{tcp, user_store, pg, rank, world};
  });
}

char* shim_dist_destroy(void* h) {
  return guarded([&] {
    if (h != nullptr) {
      delete static_cast<Dist*>(h);
    }
  });
}

char* shim_all_reduce(void* h, const void* t, int op) {
  return guarded([&] {
    Dist& d = dist(h);
    at::Tensor x = tensor(t);
    std::vector<at::Tensor> v{x};
    wait(d.pg->allreduce(v, c10d::AllreduceOptions()));
    finish_reduce(d, x, op);
  });
}

}  // extern "C"

namespace {

// A bucket whose all-reduce is in flight: the flat buffer being reduced, the caller's tensors
// it is copied back into, and the c10d work to wait for.
struct PendingBucket {
  c10::intrusive_ptr<c10d::Work> work;
  at::Tensor flat;
  std::vector<at::Tensor> targets;
  std::vector<int64_t> sizes;
  int op;
  int world;
};

// Flattens the bucket (one dtype and device) and starts its all-reduce.
PendingBucket* start_bucket(Dist& d, const void* const* ts, size_t n, int op) {
  std::vector<at::Tensor> v = tensors(ts, n);
  std::vector<at::Tensor> flat_parts;
  std::vector<int64_t> sizes;
  flat_parts.reserve(n);
  sizes.reserve(n);
  for (const auto& x : v) {
    if (x.scalar_type() != v[0].scalar_type() || x.device() != v[0].device()) {
      throw std::invalid_argument("all_reduce_coalesced: tensors must share one dtype and device");
    }
    flat_parts.push_back(x.reshape({-1}));
    sizes.push_back(x.numel());
  }
  at::Tensor flat = at::cat(flat_parts);
  std::vector<at::Tensor> buf{flat};
  auto work = d.pg->allreduce(buf, c10d::AllreduceOptions());
  return new PendingBucket{work, flat, std::move(v), std::move(sizes), op, d.world};
}

// Waits for the bucket's all-reduce and copies the result back into the caller's tensors.
void finish_bucket(PendingBucket& b) {
  b.work->wait();
  if (b.op == 1) {
    b.flat.div_(static_cast<double>(b.world));
  } else if (b.op != 0) {
    throw std::invalid_argument("unknown reduce op code " + std::to_string(b.op));
  }
  auto pieces = b.flat.split_with_sizes(b.sizes);
  for (size_t i = 0; i < b.targets.size(); ++i) {
    b.targets[i].copy_(pieces[i].view(b.targets[i].sizes()));
  }
}

}  // namespace

extern "C" {

// One collective over a bucket: the tensors (same dtype and device) are flattened into one
// buffer, reduced, and copied back.
char* shim_all_reduce_coalesced(void* h, const void* const* ts, size_t n, int op) {
  return guarded([&] {
    Dist& d = dist(h);
    if (n == 0) {
      return;
    }
    std::unique_ptr<PendingBucket> b(start_bucket(d, ts, n, op));
    finish_bucket(*b);
  });
}

// Starts a bucket's all-reduce and returns at once (`*out` receives the pending bucket);
// `shim_all_reduce_finish` completes it. The caller's tensors must not change until then.
char* shim_all_reduce_start(void* h, const void* const* ts, size_t n, int op, void** out) {
  return guarded([&] {
    *out = nullptr;
    if (n == 0) {
      throw std::invalid_argument("all_reduce_start: empty bucket");
    }
    *out = start_bucket(dist(h), ts, n, op);
  });
}

// Waits for a started bucket, writes the reduced values back and releases it (also on error).
char* shim_all_reduce_finish(void* pending) {
  std::unique_ptr<PendingBucket> b(static_cast<PendingBucket*>(pending));
  return guarded([&] {
    if (!b) {
      throw std::invalid_argument("all_reduce_finish: null bucket");
    }
    finish_bucket(*b);
  });
}

// `input` is the flat tensor (world * shard elements); `output` receives this rank's reduced
// shard (input.numel() / world elements, same dtype).
char* shim_reduce_scatter(void* h, const void* input, const void* output, int op) {
  return guarded([&] {
    Dist& d = dist(h);
    at::Tensor in = tensor(input);
    at::Tensor out = tensor(output);
    if (in.numel() != out.numel() * d.world) {
      throw std::invalid_argument("reduce_scatter: input has " + std::to_string(in.numel()) +
                                  " elements, expected world_size * output = " +
                                  std::to_string(out.numel() * d.world));
    }
    at::Tensor in_flat = in.contiguous().reshape({-1});
    at::Tensor out_flat = out.is_contiguous() ? out.view({-1}) : out.contiguous().view({-1});
    if (d.pg->getBackendName() == "gloo") {
      // Gloo's list form: one input chunk per rank.
      std::vector<at::Tensor> outs{out_flat};
      std::vector<std::vector<at::Tensor>> ins{in_flat.chunk(d.world)};
      wait(d.pg->reduce_scatter(outs, ins, c10d::ReduceScatterOptions()));
    } else {
      wait(d.pg->_reduce_scatter_base(out_flat, in_flat, c10d::ReduceScatterOptions()));
    }
    finish_reduce(d, out_flat, op);
    if (!out.is_contiguous()) {
      out.copy_(out_flat.view(out.sizes()));
    }
  });
}

// `input` is this rank's shard; `output` (world * shard elements) receives every rank's shard
// in rank order.
char* shim_all_gather(void* h, const void* input, const void* output) {
  return guarded([&] {
    Dist& d = dist(h);
    at::Tensor in = tensor(input);
    at::Tensor out = tensor(output);
    if (out.numel() != in.numel() * d.world) {
      throw std::invalid_argument("all_gather: output has " + std::to_string(out.numel()) +
                                  " elements, expected world_size * input = " +
                                  std::to_string(in.numel() * d.world));
    }
    at::Tensor in_flat = in.contiguous().reshape({-1});
    at::Tensor out_flat = out.is_contiguous() ? out.view({-1}) : out.contiguous().view({-1});
    if (d.pg->getBackendName() == "gloo") {
      std::vector<std::vector<at::Tensor>> outs{out_flat.chunk(d.world)};
      std::vector<at::Tensor> ins{in_flat};
      wait(d.pg->allgather(outs, ins, c10d::AllgatherOptions()));
    } else {
      wait(d.pg->_allgather_base(out_flat, in_flat, c10d::AllgatherOptions()));
    }
    if (!out.is_contiguous()) {
      out.copy_(out_flat.view(out.sizes()));
    }
  });
}

char* shim_broadcast(void* h, const void* t, int root) {
  return guarded([&] {
    Dist& d = dist(h);
    if (root < 0 || root >= d.world) {
      throw std::invalid_argument("broadcast: root " + std::to_string(root) +
                                  " is not a rank of a world of " + std::to_string(d.world));
    }
    std::vector<at::Tensor> v{tensor(t)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    wait(d.pg->broadcast(v, o));
  });
}

char* shim_barrier(void* h) {
  return guarded([&] {
    Dist& d = dist(h);
    wait(d.pg->barrier(c10d::BarrierOptions()));
  });
}

char* shim_store_set(void* h, const char* key, const uint8_t* data, size_t len) {
  return guarded([&] {
    Dist& d = dist(h);
    d.user->set(std::string(key), std::vector<uint8_t>(data, data + len));
  });
}

// Waits (up to the store's timeout) for `key`; the value is returned as a malloc'd buffer that
// the caller releases with `shim_free`.
char* shim_store_get(void* h, const char* key, uint8_t** out, size_t* out_len) {
  return guarded([&] {
    *out = nullptr;
    *out_len = 0;
    Dist& d = dist(h);
    std::vector<uint8_t> v = d.user->get(std::string(key));
    uint8_t* buf = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (buf == nullptr) {
      throw std::bad_alloc();
    }
    if (!v.empty()) {
      std::memcpy(buf, v.data(), v.size());
    }
    *out = buf;
    *out_len = v.size();
  });
}

// A second reference to the group's key store, for another thread: c10d's TCPStore serialises
// its own operations (one lock per client), and the reference keeps the client alive after the
// process group is destroyed.
struct SharedStore {
  c10::intrusive_ptr<c10d::Store> store;
};

char* shim_store_share(void* h, void** out) {
  return guarded([&] {
    *out = nullptr;
    *out = new SharedStore{dist(h).user};
  });
}

void shim_store_release(void* s) {
  delete static_cast<SharedStore*>(s);
}

char* shim_shared_store_set(void* s, const char* key, const uint8_t* data, size_t len) {
  return guarded([&] {
    static_cast<SharedStore*>(s)->store->set(std::string(key),
                                             std::vector<uint8_t>(data, data + len));
  });
}

// Waits (up to the store's timeout) for `key`, like `shim_store_get`.
char* shim_shared_store_get(void* s, const char* key, uint8_t** out, size_t* out_len) {
  return guarded([&] {
    *out = nullptr;
    *out_len = 0;
    std::vector<uint8_t> v = static_cast<SharedStore*>(s)->store->get(std::string(key));
    uint8_t* buf = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (buf == nullptr) {
      throw std::bad_alloc();
    }
    if (!v.empty()) {
      std::memcpy(buf, v.data(), v.size());
    }
    *out = buf;
    *out_len = v.size();
  });
}

// Whether `key` is set, without waiting.
char* shim_shared_store_check(void* s, const char* key, int* out) {
  return guarded([&] {
    *out = static_cast<SharedStore*>(s)->store->check({std::string(key)}) ? 1 : 0;
  });
}

// One AdamW step over a parameter group with `at::_fused_adamw_`. `steps` are f32 scalar
// tensors (one per parameter) holding the number of updates taken so far; they are incremented
// here first, as PyTorch's Python optimizer does (the kernel itself does not). `found_inf` may
// be null; otherwise it is an f32 scalar on the parameters' device, and where it holds 1 the
// kernel leaves every tensor unchanged and the step counts are taken back, so a step with a
// non-finite loss or gradient is skipped without the host reading anything.
char* shim_fused_adamw(const void* const* params, const void* const* grads,
                       const void* const* exp_avgs, const void* const* exp_avg_sqs,
                       const void* const* steps, size_t n, double lr, double beta1, double beta2,
                       double weight_decay, double eps, const void* found_inf) {
  return guarded([&] {
    if (n == 0) {
      return;
    }
    std::vector<at::Tensor> p = tensors(params, n);
    std::vector<at::Tensor> g = tensors(grads, n);
    std::vector<at::Tensor> m = tensors(exp_avgs, n);
    std::vector<at::Tensor> v = tensors(exp_avg_sqs, n);
    std::vector<at::Tensor> s = tensors(steps, n);
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) {
      inf = tensor(found_inf);
    }
    at::NoGradGuard no_grad;
    at::_foreach_add_(s, 1.0);
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, inf);
    if (inf) {
      at::_foreach_sub_(s, std::vector<at::Tensor>(n, *inf));
    }
  });
}

// The global L2 norm of `ts` (computed in f32) as a new 0-d f32 tensor written into `*out`.
char* shim_foreach_norm(const void* const* ts, size_t n, void* out) {
  return guarded([&] {
    if (out == nullptr) {
      throw std::invalid_argument("null output tensor pointer");
    }
    at::Tensor& result = *static_cast<at::Tensor*>(out);
    at::NoGradGuard no_grad;
    if (n == 0) {
      result = at::zeros({}, at::kFloat);
      return;
    }
    std::vector<at::Tensor> v = tensors(ts, n);
    std::vector<at::Tensor> norms = at::_foreach_norm(v, 2, at::kFloat);
    result = at::linalg_vector_norm(at::stack(norms), 2);
  });
}

// Drops the gradients of `ts` (PyTorch's `zero_grad(set_to_none=True)`; tch can only zero
// them in place). The next backward then writes each gradient instead of adding into a zeroed
// one, and the gradients' memory is free between steps.
char* shim_clear_grads(const void* const* ts, size_t n) {
  return guarded([&] {
    for (at::Tensor& t : tensors(ts, n)) {
      t.mutable_grad().reset();
    }
  });
}

// The libtorch version these headers (and so the linked library) belong to, e.g. "2.11.0", as
// a malloc'd string the caller releases with `shim_free`.
char* shim_torch_version(char** out) {
  return guarded([&] {
    *out = dup_string(TORCH_VERSION);
    if (*out == nullptr) {
      throw std::bad_alloc();
    }
  });
}

// Peak bytes allocated by the CUDA caching allocator on `device_index` since the start or the
// last reset (`torch.cuda.max_memory_allocated`). Fails when no CUDA allocator is registered
// (a CPU-only build or no GPU).
char* shim_cuda_peak_allocated(int device_index, int64_t* out) {
  return guarded([&] {
    *out = 0;
    const auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)
                           ->getDeviceStats(static_cast<c10::DeviceIndex>(device_index));
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *out = stats.allocated_bytes[aggregate].peak;
  });
}

// `torch.cuda.reset_peak_memory_stats`.
char* shim_cuda_reset_peak(int device_index) {
  return guarded([&] {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)
        ->resetPeakStats(static_cast<c10::DeviceIndex>(device_index));
  });
}

// An event recorded on the current stream of `t`'s device (CUDA, or any backend with events)
// into `*out`, released with `shim_event_free`: it completes when the work queued so far has.
// The trainer records one after queueing a device-to-host copy, so reading the copy later waits
// for that copy only, not for the work queued after it.
char* shim_event_record(const void* t, void** out) {
  return guarded([&] {
    *out = nullptr;
    const c10::Device device = tensor(t).device();
    const c10::impl::VirtualGuardImpl impl(device.type());
    auto event = std::make_unique<c10::Event>(device.type());
    event->record(impl.getStream(device));
    *out = event.release();
  });
}

// Blocks the calling thread until the event has completed.
char* shim_event_synchronize(void* event) {
  return guarded([&] {
    if (event == nullptr) {
      throw std::invalid_argument("null event");
    }
    static_cast<c10::Event*>(event)->synchronize();
  });
}

void shim_event_free(void* event) { delete static_cast<c10::Event*>(event); }

}  // extern "C"
