#include "backends/comm/gloo_comm.h"

#include <gloo/allgather.h>
#include <gloo/allgatherv.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>

#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <string_view>
#include <utility>
#include <vector>

#include "backends/comm/rendezvous.h"
#include "core/error.h"

namespace cptune::backends {

struct GlooComm::Endpoint {
  std::string rendezvous;  // the spec, for messages
  std::shared_ptr<gloo::rendezvous::Store> store;
  std::shared_ptr<gloo::transport::Device> device;
};

namespace {

// Slot prefix of ring transfers, apart from Gloo's collective prefixes (0x01..0x08), so a
// point-to-point message never matches a collective's.
constexpr uint8_t kP2pSlotPrefix = 0x63;

// Where an operation ran, for messages.
struct Where {
  int rank;
  int size;
  std::string group;  // the comm's store prefix
  std::chrono::milliseconds timeout;
};

std::string location(const Where& where) {
  return "on rank " + std::to_string(where.rank) + " of " + std::to_string(where.size) + " [" + where.group + "]";
}

[[noreturn]] void throw_misuse(const std::string& operation, const Where& where, const std::string& problem) {
  throw Error("gloo " + operation + " " + location(where) + ": " + problem);
}

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// What a Gloo message means for the user; Gloo's own text follows in parentheses.
std::string verdict(std::string_view detail, std::chrono::milliseconds timeout) {
  if (contains(detail, "imeout") || contains(detail, "imed out"))
    return "timed out after " + std::to_string(timeout.count()) + " ms: a peer died or never arrived";
  if (contains(detail, "closed") || contains(detail, "reset by peer") || contains(detail, "Broken pipe") ||
      contains(detail, "refused"))
    return "lost its connection to a peer: a peer died or left early";
  if (contains(detail, "already exists") || contains(detail, "already set"))
    return "found a key an earlier run left in the store: use a fresh rendezvous directory or another prefix";
  return "failed";
}

// Gloo's message on one line, without the "[./gloo/x.cc:147] " and "[enforce fail at ...]"
// source locations it stacks up.
std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  static const std::regex source_location(R"(\[(enforce fail at )?[^\]\s]+:[0-9]+\] *)");
  return std::regex_replace(text, source_location, "");
}

// Call inside a catch block: Gloo throws IoException, EnforceNotMet (not a gloo::Exception)
// and std::system_error; the user gets one Error saying which operation, where, and why.
[[noreturn]] void rethrow_current_as_error(const std::string& operation, const Where& where) {
  std::string detail = "unknown exception";
  try {
    throw;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    detail = one_line(e.what());
  } catch (...) {
  }
  throw Error("gloo " + operation + " " + location(where) + " " + verdict(detail, where.timeout) + " (" + detail + ")");
}

// Gloo takes mutable pointers even for inputs it only reads, and wants one even for 0 bytes.
uint8_t* bytes_at(const void* ptr) {
  static uint8_t nothing = 0;
  return ptr != nullptr ? static_cast<uint8_t*>(const_cast<void*>(ptr)) : &nothing;
}

int64_t check_counts(const std::string& operation, const Where& where, std::string_view name,
                     std::span<const int64_t> counts) {
  if (counts.size() != static_cast<size_t>(where.size))
    throw_misuse(operation, where, std::string(name) + " has " + std::to_string(counts.size()) +
                                       " entries; it needs one per member (" + std::to_string(where.size) + ")");
  int64_t total = 0;
  for (size_t p = 0; p < counts.size(); ++p) {
    if (counts[p] < 0)
      throw_misuse(operation, where, std::string(name) + "[" + std::to_string(p) + "] = " +
                                         std::to_string(counts[p]) + " is negative");
    total += counts[p];
  }
  return total;
}

void check_buffer(const std::string& operation, const Where& where, std::string_view name, const void* ptr,
                  int64_t bytes) {
  if (bytes < 0) throw_misuse(operation, where, std::string(name) + " bytes " + std::to_string(bytes) + " is negative");
  if (ptr == nullptr && bytes > 0)
    throw_misuse(operation, where, std::string(name) + " is null but " + std::to_string(bytes) + " bytes move");
}

void copy_bytes(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
}

// Explicit options win over the environment, the environment over the one-host default.
gloo::transport::tcp::attr device_attr(const GlooCommOptions& options) {
  gloo::transport::tcp::attr attr;
  const char* env_iface = std::getenv("CPTUNE_GLOO_IFACE");
  const char* env_hostname = std::getenv("CPTUNE_GLOO_HOSTNAME");
  if (!options.iface.empty()) {
    attr.iface = options.iface;
  } else if (!options.hostname.empty()) {
    attr.hostname = options.hostname;
  } else if (env_iface != nullptr && *env_iface != '\0') {
    attr.iface = env_iface;
  } else if (env_hostname != nullptr && *env_hostname != '\0') {
    attr.hostname = env_hostname;
  } else {
    attr.hostname = "127.0.0.1";
  }
  return attr;
}

std::shared_ptr<gloo::transport::Device> make_device(const GlooCommOptions& options) {
  const gloo::transport::tcp::attr attr = device_attr(options);
  try {
    return gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    const std::string where = attr.iface.empty() ? "host '" + attr.hostname + "'" : "interface '" + attr.iface + "'";
    throw Error("cannot start the gloo TCP device of rank " + std::to_string(options.rank) + " on " + where + " (" +
                one_line(e.what()) +
                "); set CPTUNE_GLOO_HOSTNAME to an address of this host or CPTUNE_GLOO_IFACE to one of its "
                "interfaces");
  }
}

// Gloo's TCP device writes to peers from its own thread with plain write(): a peer that died
// mid-message raises SIGPIPE, whose default kills this rank before Gloo can report EPIPE as
// "lost its connection". Ignored process-wide, once, unless the program installed a handler.
void ignore_sigpipe() {
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL &&
      !(current.sa_flags & SA_SIGINFO))
    signal(SIGPIPE, SIG_IGN);
}

void check_options(const GlooCommOptions& options) {
  const std::string ranks = "rank " + std::to_string(options.rank) + " of " + std::to_string(options.size);
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size)
    throw Error("gloo comm " + ranks + ": the rank must be in 0..size-1 and the size at least 1");
  if (options.timeout.count() <= 0)
    throw Error("gloo comm " + ranks + ": timeout " + std::to_string(options.timeout.count()) +
                " ms must be positive");
  if (options.prefix.empty()) throw Error("gloo comm " + ranks + ": the store prefix must not be empty");
}

class GlooRequest final : public Request {
 public:
  GlooRequest(std::unique_ptr<gloo::transport::UnboundBuffer> buffer, bool is_send, std::string operation,
              Where where)
      : buffer_(std::move(buffer)), is_send_(is_send), operation_(std::move(operation)), where_(std::move(where)) {}

  void wait() override {
    if (done_) return;
    bool completed = false;
    try {
      completed = is_send_ ? buffer_->waitSend(where_.timeout) : buffer_->waitRecv(where_.timeout);
    } catch (...) {
      rethrow_current_as_error(operation_, where_);
    }
    // Only abortWaitSend/abortWaitRecv make Gloo return false, and nothing here calls them.
    if (!completed) throw_misuse(operation_, where_, "was aborted");
    done_ = true;
  }

 private:
  std::unique_ptr<gloo::transport::UnboundBuffer> buffer_;
  bool is_send_;
  std::string operation_;
  Where where_;
  bool done_ = false;
};

}  // namespace

GlooComm::GlooComm(std::shared_ptr<const Endpoint> endpoint, std::shared_ptr<gloo::Context> context,
                   std::string prefix, std::chrono::milliseconds timeout)
    : endpoint_(std::move(endpoint)), context_(std::move(context)), prefix_(std::move(prefix)), timeout_(timeout) {}

GlooComm::~GlooComm() = default;

std::unique_ptr<GlooComm> GlooComm::create(const GlooCommOptions& options) {
  check_options(options);
  ignore_sigpipe();
  const RendezvousSpec spec = parse_rendezvous(options.rendezvous);
  auto endpoint = std::make_shared<Endpoint>();
  endpoint->rendezvous = to_string(spec);
  endpoint->store = open_store(spec, options.timeout, options.rank);
  endpoint->device = make_device(options);
  return connect(std::move(endpoint), options.rank, options.size, options.prefix, options.timeout);
}

std::unique_ptr<GlooComm> GlooComm::connect(std::shared_ptr<const Endpoint> endpoint, int rank, int size,
                                            std::string prefix, std::chrono::milliseconds timeout) {
  auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
  // Set before connecting: the store waits and the TCP connects use the context's timeout.
  context->setTimeout(timeout);
  try {
    gloo::rendezvous::PrefixStore store(prefix, *endpoint->store);
    std::shared_ptr<gloo::transport::Device> device = endpoint->device;  // Gloo takes a mutable ref
    context->connectFullMesh(store, device);
  } catch (...) {
    rethrow_current_as_error("rendezvous through " + endpoint->rendezvous, Where{rank, size, prefix, timeout});
  }
  return std::unique_ptr<GlooComm>(new GlooComm(std::move(endpoint), std::move(context), std::move(prefix), timeout));
}

int GlooComm::rank() const { return context_->rank; }
int GlooComm::size() const { return context_->size; }

void GlooComm::rethrow_as_error(const std::string& operation) const {
  rethrow_current_as_error(operation, Where{rank(), size(), prefix_, timeout_});
}

std::unique_ptr<Comm> GlooComm::split(int color, int key) {
  const int32_t mine[2] = {color, key};
  std::vector<int32_t> everyone(2 * static_cast<size_t>(size()));
  allgather_host(mine, sizeof mine, everyone.data());

  std::vector<std::pair<int32_t, int>> members;  // (key, rank here) of my color; ties keep rank order
  for (int p = 0; p < size(); ++p)
    if (everyone[2 * p] == color) members.emplace_back(everyone[2 * p + 1], p);
  std::sort(members.begin(), members.end());
  const auto me = std::find(members.begin(), members.end(), std::pair<int32_t, int>{key, rank()});
  const int new_rank = static_cast<int>(me - members.begin());

  // Every member counts the same splits, so all agree on a prefix no earlier split used.
  std::string prefix = prefix_ + "/split" + std::to_string(splits_++) + "/color" + std::to_string(color);
  return connect(endpoint_, new_rank, static_cast<int>(members.size()), std::move(prefix), timeout_);
}

void GlooComm::alltoallv(const void* send, std::span<const int64_t> send_bytes, void* recv,
                         std::span<const int64_t> recv_bytes) {
  const std::string operation = "alltoallv";
  const Where where{rank(), size(), prefix_, timeout_};
  check_buffer(operation, where, "send", send, check_counts(operation, where, "send_bytes", send_bytes));
  check_buffer(operation, where, "recv", recv, check_counts(operation, where, "recv_bytes", recv_bytes));
  const int64_t own = send_bytes[rank()];
  if (own != recv_bytes[rank()])
    throw_misuse(operation, where, "send_bytes[self] = " + std::to_string(own) + " but recv_bytes[self] = " +
                                       std::to_string(recv_bytes[rank()]) + "; a member's block to itself is one block");
  if (size() == 1) return copy_bytes(recv, send, own);
  try {
    gloo::AlltoallvOptions options(context_);
    options.setInput(bytes_at(send), std::vector<int64_t>(send_bytes.begin(), send_bytes.end()));
    options.setOutput(bytes_at(recv), std::vector<int64_t>(recv_bytes.begin(), recv_bytes.end()));
    options.setTag(next_collective_tag());
    options.setTimeout(timeout_);
    gloo::alltoallv(options);
  } catch (...) {
    rethrow_as_error(operation);
  }
}

void GlooComm::allgatherv(const void* send, int64_t send_bytes, void* recv, std::span<const int64_t> recv_bytes) {
  const std::string operation = "allgatherv";
  const Where where{rank(), size(), prefix_, timeout_};
  check_buffer(operation, where, "send", send, send_bytes);
  check_buffer(operation, where, "recv", recv, check_counts(operation, where, "recv_bytes", recv_bytes));
  if (send_bytes != recv_bytes[rank()])
    throw_misuse(operation, where, "send_bytes = " + std::to_string(send_bytes) + " but recv_bytes[self] = " +
                                       std::to_string(recv_bytes[rank()]));
  // Gloo's ring needs a pair to a neighbour, which a comm of one does not have.
  if (size() == 1) return copy_bytes(recv, send, send_bytes);
  try {
    gloo::AllgathervOptions options(context_);
    options.setInput(bytes_at(send), static_cast<size_t>(send_bytes));
    options.setOutput(bytes_at(recv), std::vector<size_t>(recv_bytes.begin(), recv_bytes.end()));
    options.setTag(next_collective_tag());
    options.setTimeout(timeout_);
    gloo::allgatherv(options);
  } catch (...) {
    rethrow_as_error(operation);
  }
}

std::unique_ptr<Request> GlooComm::isend(const void* buf, int64_t bytes, int peer, int tag) {
  return start_p2p(true, const_cast<void*>(buf), bytes, peer, tag);
}

std::unique_ptr<Request> GlooComm::irecv(void* buf, int64_t bytes, int peer, int tag) {
  return start_p2p(false, buf, bytes, peer, tag);
}

std::unique_ptr<Request> GlooComm::start_p2p(bool is_send, void* buf, int64_t bytes, int peer, int tag) {
  const std::string operation =
      std::string(is_send ? "isend to" : "irecv from") + " rank " + std::to_string(peer) + " (tag " +
      std::to_string(tag) + ")";
  const Where where{rank(), size(), prefix_, timeout_};
  if (peer < 0 || peer >= size() || peer == rank())
    throw_misuse(operation, where, "the peer must be another member, in 0.." + std::to_string(size() - 1));
  if (tag < 0) throw_misuse(operation, where, "the tag must not be negative");
  check_buffer(operation, where, "buffer", buf, bytes);
  try {
    auto buffer = context_->createUnboundBuffer(bytes_at(buf), static_cast<size_t>(bytes));
    const uint64_t slot = gloo::Slot::build(kP2pSlotPrefix, static_cast<uint32_t>(tag));
    if (is_send) {
      buffer->send(peer, slot);
    } else {
      buffer->recv(peer, slot);
    }
    return std::make_unique<GlooRequest>(std::move(buffer), is_send, operation, where);
  } catch (...) {
    rethrow_as_error(operation);
  }
}

void GlooComm::barrier() {
  if (size() == 1) return;
  try {
    gloo::BarrierOptions options(context_);
    options.setTag(next_collective_tag());
    options.setTimeout(timeout_);
    gloo::barrier(options);
  } catch (...) {
    rethrow_as_error("barrier");
  }
}

void GlooComm::allgather_host(const void* send, int64_t bytes, void* recv) {
  const std::string operation = "allgather_host";
  const Where where{rank(), size(), prefix_, timeout_};
  check_buffer(operation, where, "send", send, bytes);
  check_buffer(operation, where, "recv", recv, bytes * size());
  if (size() == 1) return copy_bytes(recv, send, bytes);
  if (bytes == 0) return;  // every member passes the same size: nothing moves anywhere
  try {
    gloo::AllgatherOptions options(context_);
    options.setInput(bytes_at(send), static_cast<size_t>(bytes));
    options.setOutput(bytes_at(recv), static_cast<size_t>(bytes) * static_cast<size_t>(size()));
    options.setTag(next_collective_tag());
    options.setTimeout(timeout_);
    gloo::allgather(options);
  } catch (...) {
    rethrow_as_error(operation);
  }
}

}  // namespace cptune::backends
