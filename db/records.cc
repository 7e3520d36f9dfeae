#include "db/records.h"
// No fmt here: these files also build libcptune_lookup.so, which should need only SQLite.

namespace cptune::db {
bool ShapeFamily::operator==(const ShapeFamily& o) const {
  return batch == o.batch && q_heads == o.q_heads && kv_heads == o.kv_heads && head_dim == o.head_dim &&
         v_head_dim == o.v_head_dim && dtype == o.dtype && mask == o.mask;
}

ShapeFamily family_of(const ShapeView& v) {
  return ShapeFamily{v.batch, v.q_heads, v.kv_heads, v.head_dim, v.v_head_dim, v.dtype, v.mask};
}

std::string describe(const Fingerprint& fp) {
  using std::to_string;
  return fp.backend + " " + fp.device_model + " P=" + to_string(fp.cluster.world) +
         " G=" + to_string(fp.cluster.ranks_per_node) + " nodes=" + to_string(fp.cluster.nodes());
}

}  // namespace cptune::db
