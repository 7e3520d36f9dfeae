#include "db/records.h"
// No fmt here: these files also build libcptune_lookup.so, which should need only SQLite.

namespace cptune::db {
std::string describe(const Fingerprint& fp) {
  using std::to_string;
  return fp.backend + " " + fp.device_model + " P=" + to_string(fp.cluster.world) +
         " G=" + to_string(fp.cluster.ranks_per_node) + " nodes=" + to_string(fp.cluster.nodes());
}

}  // namespace cptune::db
