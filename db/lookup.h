#pragma once
// db::Lookup: what an engine asks at run time. Opens the store read-only once, keeps the best
// row of every shape measured under the caller's fingerprint in memory, and closes the file.
// A query answers, in this order: the exact shape (a hash probe, no allocation); the nearest
// measured shape of the same family (closest total tokens in log distance); the injected
// fallback, the simulator's pick; or nothing.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "db/flat_index.h"
#include "db/records.h"

namespace cptune::db {

enum class Source { exact, nearest, simulated };
std::string_view to_string(Source s);  // "exact", "nearest", "simulated"

struct Answer {
  LayoutChoice choice;
  double time_s = 0;           // measured median (exact, nearest: of the shape measured) or predicted
  Source source = Source::exact;
  int64_t measured_tokens = 0;  // total tokens of the shape the answer was measured on; 0 if simulated
};

// The simulator's pick for a shape the store has no family for; nullopt if it has none either.
// Called only on that path, so it may allocate and take its time.
using Fallback = std::function<std::optional<Answer>(const AttentionShape&)>;

// The layouts the caller can run (an engine's rules, sim/constraints.h): false refuses a
// candidate on a shape. Empty: every layout.
using Filter = std::function<bool(const LayoutChoice&, const ShapeView&)>;

// Why the fallback has no answer for a shape (the rule that refused the last candidate); called
// only when a query comes back empty.
using Explain = std::function<std::string(const AttentionShape&)>;

class Lookup {
 public:
  // Throws Error when the database cannot be read (missing, not a database, corrupt, newer).
  // A fingerprint with no rows in the file is not an error: every query goes to the fallback.
  // See Store::match_fingerprint for how fp is matched (empty version fields match any).
  // With a filter, each shape's answer is its fastest measurement the filter allows (not the
  // stored best), a nearest answer must be allowed on the queried shape, and the fallback is
  // the caller's to restrict alike.
  // Only measurements of `pass` answer: a forward time says nothing of a backward's winner.
  static Lookup open(const std::string& db_path, const Fingerprint& fp, Fallback fallback = {}, Filter filter = {},
                     Pass pass = Pass::forward);
  // The same from rows already read, for callers that hold a Store open. Takes the rows by
  // value so their shapes move into the table instead of being copied.
  explicit Lookup(std::vector<BestRow> rows, Fallback fallback = {});
  // No database: every answer is the fallback's (source simulated). `reason` says so in messages.
  static Lookup without_database(Fallback fallback, Filter filter, std::string reason);

  std::optional<Answer> query(const ShapeView& shape) const;
  std::optional<Answer> query(const AttentionShape& shape) const { return query(view_of(shape)); }

  size_t shapes() const { return entries_.size(); }
  std::optional<int64_t> fingerprint_id() const { return fingerprint_id_; }
  // Why a query can come back empty, for messages: the fingerprint asked for and, when the
  // database has no rows for it, the closest fingerprint it holds.
  const std::string& not_found_reason() const { return not_found_reason_; }
  bool has_fallback() const { return bool(fallback_); }
  void set_explain(Explain explain) { explain_ = std::move(explain); }
  // not_found_reason() and, when the fallback has none either, why (Explain), for one shape.
  std::string why_not(const ShapeView& shape) const;

 private:
  struct Entry {
    AttentionShape shape;
    Answer answer;
  };
  // Shapes of one family, by log of total tokens ascending, for the nearest answer.
  struct Family {
    uint32_t first_entry;  // its first shape: the family's fields
    std::vector<std::pair<double, uint32_t>> by_log_tokens;  // (log tokens, entry)
  };

  std::optional<Answer> exact(const ShapeView& shape, uint64_t hash) const;
  std::optional<Answer> nearest(const ShapeView& shape) const;
  void add_to_family(uint32_t entry);
  ShapeView family_shape(uint32_t family) const { return view_of(entries_[families_[family].first_entry].shape); }

  std::vector<Entry> entries_;
  FlatIndex by_shape_;
  std::vector<Family> families_;
  FlatIndex by_family_;
  Fallback fallback_;
  Filter filter_;
  Explain explain_;
  std::optional<int64_t> fingerprint_id_;
  std::string not_found_reason_;
};

}  // namespace cptune::db
