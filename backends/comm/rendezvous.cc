#include "backends/comm/rendezvous.h"

#include <gloo/rendezvous/file_store.h>
// Debian installs hiredis.h under hiredis/; Gloo's header finds it there only with this macro.
#ifndef HIREDIS_NESTED_INCLUDE
#define HIREDIS_NESTED_INCLUDE 1
#endif
#include <gloo/rendezvous/redis_store.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "backends/comm/store_token.h"
#include "backends/comm/tcp_store.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

constexpr std::string_view kFileScheme = "file://";
constexpr std::string_view kRedisScheme = "redis://";
constexpr std::string_view kEnvScheme = "env://";
constexpr int kRedisDefaultPort = 6379;

[[noreturn]] void throw_bad_spec(std::string_view spec, std::string_view why) {
  throw Error("bad rendezvous spec '" + std::string(spec) + "': " + std::string(why) +
              "; accepted forms: file:///absolute/dir (a directory every rank can see) or "
              "redis://host:port (port 6379 when left out) or env:// (MASTER_ADDR and MASTER_PORT, rank 0 serves a "
              "TCP store)");
}

// The whole text must be a decimal integer; nullopt otherwise.
std::optional<int> parse_int(std::string_view text) {
  int value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

RendezvousSpec parse_file_spec(std::string_view spec) {
  std::string_view dir = spec.substr(kFileScheme.size());
  if (dir.empty() || dir.front() != '/') throw_bad_spec(spec, "the directory must be an absolute path");
  RendezvousSpec out;
  out.kind = RendezvousSpec::Kind::file;
  out.directory = dir;
  return out;
}

RendezvousSpec parse_redis_spec(std::string_view spec) {
  std::string_view address = spec.substr(kRedisScheme.size());
  if (!address.empty() && address.back() == '/') address.remove_suffix(1);
  const size_t colon = address.find(':');
  std::string_view host = address.substr(0, colon);
  if (host.empty()) throw_bad_spec(spec, "the Redis host is missing");
  int port = kRedisDefaultPort;
  if (colon != std::string_view::npos) {
    std::optional<int> parsed = parse_int(address.substr(colon + 1));
    if (!parsed || *parsed < 1 || *parsed > 65535) throw_bad_spec(spec, "the port must be an integer in 1..65535");
    port = *parsed;
  }
  RendezvousSpec out;
  out.kind = RendezvousSpec::Kind::redis;
  out.host = host;
  out.port = port;
  return out;
}

// Bounds every wait by one timeout. Gloo's connectFullMesh reads some keys with get(), which
// waits the store's fixed 30 s for a key that a dead rank never writes.
class BoundedStore final : public gloo::rendezvous::Store {
 public:
  BoundedStore(std::unique_ptr<gloo::rendezvous::Store> inner, std::chrono::milliseconds timeout)
      : inner_(std::move(inner)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override { inner_->set(key, data); }
  std::vector<char> get(const std::string& key) override {
    inner_->wait({key}, timeout_);
    return inner_->get(key);
  }
  void wait(const std::vector<std::string>& keys) override { inner_->wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    inner_->wait(keys, std::min(timeout, timeout_));
  }

 private:
  std::unique_ptr<gloo::rendezvous::Store> inner_;
  std::chrono::milliseconds timeout_;
};

// "env://" (MASTER_ADDR, MASTER_PORT) or "env://host:port".
RendezvousSpec parse_env_spec(std::string_view spec) {
  std::string_view address = spec.substr(kEnvScheme.size());
  if (!address.empty() && address.back() == '/') address.remove_suffix(1);
  std::string host, port_text;
  if (address.empty()) {
    const char* addr = std::getenv("MASTER_ADDR");
    const char* port = std::getenv("MASTER_PORT");
    if (!addr || !*addr || !port || !*port)
      throw_bad_spec(spec, std::string("env:// reads MASTER_ADDR and MASTER_PORT, but ") +
                               (!addr || !*addr ? "MASTER_ADDR" : "MASTER_PORT") +
                               " is not set; export both (the same on every rank) or write env://host:port");
    host = addr;
    port_text = port;
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string_view::npos) throw_bad_spec(spec, "env://host:port needs the port");
    host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
  }
  if (host.empty()) throw_bad_spec(spec, "the store's host is empty");
  std::optional<int> port = parse_int(port_text);
  if (!port || *port < 1 || *port > 65535)
    throw_bad_spec(spec, "the port '" + port_text + "' must be an integer in 1..65535");
  if (address.empty()) {
    // torchrun's agent serves its own store (another protocol) on MASTER_PORT and tells its
    // workers so: cptune's rank 0 then serves on the next port, or on CPTUNE_MASTER_PORT.
    const char* own = std::getenv("CPTUNE_MASTER_PORT");
    const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    if (own && *own) {
      port = parse_int(own);
      if (!port || *port < 1 || *port > 65535)
        throw_bad_spec(spec, "CPTUNE_MASTER_PORT='" + std::string(own) + "' must be an integer in 1..65535");
    } else if (agent && std::string_view(agent) == "True") {
      if (*port == 65535) throw_bad_spec(spec, "MASTER_PORT 65535 leaves no next port; set CPTUNE_MASTER_PORT");
      *port += 1;
    }
  }
  RendezvousSpec out;
  out.kind = RendezvousSpec::Kind::env;
  out.host = host;
  out.port = *port;
  return out;
}

std::unique_ptr<gloo::rendezvous::Store> open_file_store(const RendezvousSpec& spec) {
  std::error_code ec;
  if (std::filesystem::exists(spec.directory, ec) && !std::filesystem::is_directory(spec.directory, ec))
    throw Error("rendezvous directory '" + spec.directory + "' is a file, not a directory; give a directory");
  if (!std::filesystem::is_directory(spec.directory, ec))
    throw Error("rendezvous directory '" + spec.directory +
                "' does not exist; create it where every rank can see it, or use a fresh one");
  if (access(spec.directory.c_str(), W_OK | X_OK) != 0)
    throw Error("rendezvous directory '" + spec.directory + "' is not writable: " + std::strerror(errno));
  return std::make_unique<gloo::rendezvous::FileStore>(spec.directory);
}

std::unique_ptr<gloo::rendezvous::Store> open_redis_store(const RendezvousSpec& spec) {
  try {
    return std::make_unique<gloo::rendezvous::RedisStore>(spec.host, spec.port);
  } catch (const std::exception& e) {
    throw Error("cannot reach Redis at " + spec.host + ":" + std::to_string(spec.port) +
                " for rendezvous (" + e.what() + "); start redis-server there or fix the spec");
  }
}

// getenv as an optional. An empty value counts as set, so it is reported as a bad value.
std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

struct LauncherVariables {
  const char* launcher;
  const char* rank;
  const char* world;
  const char* local_rank;
  const char* local_world;  // optional
};

constexpr std::array<LauncherVariables, 3> kLaunchers = {{
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
    {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {"srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
}};

int require_int_env(const LauncherVariables& family, const char* name) {
  std::optional<std::string> value = env(name);
  if (!value)
    throw Error(std::string(family.launcher) + " environment is incomplete: " + name +
                " is not set (" + family.rank + ", " + family.world + " and " + family.local_rank +
                " go together)");
  std::optional<int> parsed = parse_int(*value);
  if (!parsed) throw Error(std::string(name) + "='" + *value + "' is not an integer");
  return *parsed;
}

LaunchEnv read_launch_env(const LauncherVariables& family) {
  LaunchEnv out;
  out.launcher = family.launcher;
  out.rank = require_int_env(family, family.rank);
  out.world = require_int_env(family, family.world);
  out.local_rank = require_int_env(family, family.local_rank);
  if (const std::optional<std::string> local = env(family.local_world)) {
    const std::optional<int> parsed = parse_int(*local);
    if (!parsed || *parsed < 1 || *parsed > out.world)
      throw Error(std::string(family.local_world) + "='" + *local + "' must be an integer in 1.." +
                  std::to_string(out.world));
    out.local_world = *parsed;
  }
  const std::string values = std::string(family.rank) + "=" + std::to_string(out.rank) + ", " + family.world +
                             "=" + std::to_string(out.world) + ", " + family.local_rank + "=" +
                             std::to_string(out.local_rank);
  if (out.world < 1) throw Error(std::string(family.launcher) + " environment is inconsistent (" + values +
                                 "): the world size must be at least 1");
  if (out.rank < 0 || out.rank >= out.world)
    throw Error(std::string(family.launcher) + " environment is inconsistent (" + values +
                "): the rank must be in 0..world-1");
  if (out.local_rank < 0 || out.local_rank > out.rank)
    throw Error(std::string(family.launcher) + " environment is inconsistent (" + values +
                "): the local rank must be in 0..rank");
  return out;
}

}  // namespace

RendezvousSpec parse_rendezvous(std::string_view spec) {
  if (spec.starts_with(kFileScheme)) return parse_file_spec(spec);
  if (spec.starts_with(kRedisScheme)) return parse_redis_spec(spec);
  if (spec.starts_with(kEnvScheme)) return parse_env_spec(spec);
  throw_bad_spec(spec, "unknown scheme");
}

std::string to_string(const RendezvousSpec& spec) {
  if (spec.kind == RendezvousSpec::Kind::file) return std::string(kFileScheme) + spec.directory;
  if (spec.kind == RendezvousSpec::Kind::env) return std::string(kEnvScheme) + spec.host + ":" + std::to_string(spec.port);
  return std::string(kRedisScheme) + spec.host + ":" + std::to_string(spec.port);
}

std::shared_ptr<gloo::rendezvous::Store> open_store(const RendezvousSpec& spec, std::chrono::milliseconds timeout,
                                                    int rank) {
  // The TCP store bounds its own waits by the timeout.
  if (spec.kind == RendezvousSpec::Kind::env) {
    const char* bind = std::getenv("CPTUNE_STORE_BIND");
    return std::make_shared<TcpStore>(spec.host, spec.port, timeout, rank == 0, store_token_from_environment().value,
                                      bind ? bind : "");
  }
  auto store = spec.kind == RendezvousSpec::Kind::file ? open_file_store(spec) : open_redis_store(spec);
  return std::make_shared<BoundedStore>(std::move(store), timeout);
}

namespace {

constexpr std::string_view kTempPrefix = "cptune-rendezvous-";
constexpr const char* kOwnerFile = "/owner";  // "pid starttime" of the process that made the directory

// starttime (field 22 of /proc/pid/stat, clock ticks since boot) of a live process, or "" when
// there is none: with the pid it names one process, even after the pid is reused.
std::string start_time_of(pid_t pid) {
  std::error_code ec;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "re");
  if (!f) return "";
  char buffer[1024] = {};
  const size_t n = std::fread(buffer, 1, sizeof buffer - 1, f);
  std::fclose(f);
  std::string stat(buffer, n);
  const size_t close = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return "";
  std::vector<std::string> fields;
  for (size_t at = close + 2; at < stat.size();) {
    const size_t end = std::min(stat.find(' ', at), stat.size());
    fields.push_back(stat.substr(at, end - at));
    at = end + 1;
  }
  // fields[0] is field 3 (state); starttime is field 22.
  if (fields.size() < 20 || fields[0] == "Z" || fields[0] == "X") return "";
  return fields[19];
}

// Directories of local runs whose launcher was killed (SIGKILL, an OOM kill) and could not remove
// them: this user's cptune-rendezvous-* whose owner process is gone. Best effort, never throws.
void remove_abandoned(const std::string& parent) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kTempPrefix, 0) != 0 || !entry.is_directory(ec)) continue;
    struct stat st {};
    if (::lstat(entry.path().c_str(), &st) != 0 || st.st_uid != ::getuid()) continue;
    FILE* f = std::fopen((entry.path().string() + kOwnerFile).c_str(), "re");
    if (!f) continue;  // no owner file: made by an older cptune, or still being set up
    long pid = 0;
    char start[64] = {};
    const int got = std::fscanf(f, "%ld %63s", &pid, start);
    std::fclose(f);
    if (got != 2 || pid <= 0) continue;
    if (start_time_of(pid_t(pid)) == start) continue;  // its launcher still runs
    std::filesystem::remove_all(entry.path(), ec);
  }
}

}  // namespace

TempRendezvousDir::TempRendezvousDir(std::string parent) {
  if (parent.empty()) parent = env("TMPDIR").value_or("");
  if (parent.empty()) parent = "/tmp";
  remove_abandoned(parent);
  std::string pattern = parent + "/" + std::string(kTempPrefix) + "XXXXXX";
  // mkdtemp creates the directory with mode 0700: private to this user, and fresh.
  if (mkdtemp(pattern.data()) == nullptr)
    throw Error("cannot create a rendezvous directory under '" + parent + "': " + std::strerror(errno) +
                "; set TMPDIR to a writable directory");
  path_ = std::move(pattern);
  if (FILE* f = std::fopen((path_ + kOwnerFile).c_str(), "we")) {
    std::fprintf(f, "%ld %s\n", long(::getpid()), start_time_of(::getpid()).c_str());
    std::fclose(f);
  }
}

TempRendezvousDir::~TempRendezvousDir() {
  if (path_.empty()) return;
  std::error_code ignored;  // best effort: a destructor must not throw
  std::filesystem::remove_all(path_, ignored);
}

TempRendezvousDir::TempRendezvousDir(TempRendezvousDir&& other) noexcept : path_(std::move(other.path_)) {
  other.path_.clear();
}

TempRendezvousDir& TempRendezvousDir::operator=(TempRendezvousDir&& other) noexcept {
  if (this != &other) {
    TempRendezvousDir old(std::move(*this));  // removes our previous directory
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

std::optional<LaunchEnv> launch_env_from_environment() {
  for (const LauncherVariables& family : kLaunchers) {
    if (env(family.rank) || env(family.world) || env(family.local_rank)) return read_launch_env(family);
  }
  return std::nullopt;
}

}  // namespace cptune::backends
