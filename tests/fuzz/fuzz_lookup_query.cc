// libFuzzer target: the C ABI query with any shape. Every call returns a status the header
// lists; an OK answer has U x R equal to the world.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "db/cptune_lookup.h"
#include "db/store.h"

namespace {

cptune_lookup* open_lookup() {
  const std::string path = "/tmp/cptune_fuzz_lookup_" + std::to_string(getpid()) + ".db";
  std::remove(path.c_str());
  {
    cptune::db::Store store = cptune::db::Store::open(path);
    cptune::db::MeasurementRow row;
    row.candidate = cptune::LayoutChoice{cptune::Strategy::uaa, 4, 1, cptune::RankOrder::ulysses_inner,
                                         cptune::HeadPolicy::balanced};
    row.median_s = row.min_s = row.max_s = 1e-3;
    row.iterations = 3;
    for (int64_t seq : {1024, 4096, 16384})
      store.record_shape({"gloo", "cpu", cptune::Cluster{4, 4}, "", ""},
                         cptune::AttentionShape{1, {seq}, 8, 8, 64, 64, cptune::DType::bf16, {}}, {row});
  }
  cptune_fingerprint fp{};
  fp.struct_size = sizeof fp;
  fp.backend = "gloo";
  fp.device_model = "cpu";
  fp.world = 4;
  fp.ranks_per_node = 4;
  fp.nodes = 1;
  cptune_lookup* lookup = nullptr;
  if (cptune_lookup_open_with_simulator(path.c_str(), &fp, "cpu-gloo", &lookup) != CPTUNE_LOOKUP_OK) __builtin_trap();
  return lookup;
}

template <typename T>
T take(const uint8_t*& data, size_t& size) {
  T value{};
  const size_t n = std::min(size, sizeof(T));
  std::memcpy(&value, data, n);
  data += n;
  size -= n;
  return value;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cptune_lookup* lookup = open_lookup();
  cptune_shape shape{};
  shape.struct_size = sizeof shape;
  shape.batch = take<int64_t>(data, size);
  shape.q_heads = take<int64_t>(data, size);
  shape.kv_heads = take<int64_t>(data, size);
  shape.head_dim = take<int64_t>(data, size);
  shape.v_head_dim = take<int64_t>(data, size);
  const size_t num_seqs = take<uint8_t>(data, size) % 5;
  std::vector<int64_t> seq_lens;
  for (size_t i = 0; i < num_seqs; ++i) seq_lens.push_back(take<int64_t>(data, size));
  shape.seq_lens = seq_lens.empty() ? nullptr : seq_lens.data();
  shape.num_seqs = seq_lens.size();
  const std::string rest(reinterpret_cast<const char*>(data), size);
  const size_t bar = rest.find('|');
  const std::string dtype = rest.substr(0, bar), mask = bar == std::string::npos ? "" : rest.substr(bar + 1);
  shape.dtype = dtype.empty() ? nullptr : dtype.c_str();
  shape.mask = mask.empty() ? nullptr : mask.c_str();
  cptune_choice out{};
  out.struct_size = sizeof out;
  const int status = cptune_lookup_query(lookup, &shape, &out);
  if (status == CPTUNE_LOOKUP_OK && out.ulysses * out.ring != 4) __builtin_trap();
  if (status != CPTUNE_LOOKUP_OK && status != CPTUNE_LOOKUP_NOT_FOUND && status != CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT)
    __builtin_trap();  // NULL, struct size, database and internal errors cannot come from a shape
  return 0;
}
