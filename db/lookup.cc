#include "db/lookup.h"

#include <algorithm>
#include <cmath>

#include "db/store.h"

namespace cptune::db {

std::string_view to_string(Source s) {
  switch (s) {
    case Source::exact:
      return "exact";
    case Source::nearest:
      return "nearest";
    case Source::simulated:
      return "simulated";
  }
  return "?";
}

Lookup Lookup::open(const std::string& db_path, const Fingerprint& fp, Fallback fallback) {
  const Store store = Store::open_read_only(db_path);
  const std::optional<int64_t> id = store.match_fingerprint(fp);
  Lookup lookup(id ? store.best(*id) : std::vector<BestRow>{}, std::move(fallback));
  lookup.fingerprint_id_ = id;
  return lookup;
}

Lookup::Lookup(std::vector<BestRow> rows, Fallback fallback)
    : by_shape_(rows.size()), by_family_(rows.size()), fallback_(std::move(fallback)) {
  entries_.reserve(rows.size());
  for (BestRow& row : rows) {
    const ShapeView shape = view_of(row.shape);
    const uint64_t hash = shape_hash(shape);
    if (exact(shape, hash)) continue;  // one answer per shape; the first row wins
    const Answer answer{row.candidate, row.median_s, Source::exact, shape.total_tokens()};
    const auto index = uint32_t(entries_.size());
    entries_.push_back(Entry{std::move(row.shape), answer});
    by_shape_.insert(hash, index);
    add_to_family(index);
  }
  for (Family& f : families_) std::sort(f.by_log_tokens.begin(), f.by_log_tokens.end());
}

void Lookup::add_to_family(uint32_t entry) {
  const ShapeView shape = view_of(entries_[entry].shape);
  const uint64_t hash = family_hash(shape);
  std::optional<uint32_t> index = by_family_.find(hash, [&](uint32_t f) { return same_family(family_shape(f), shape); });
  if (!index) {
    index = uint32_t(families_.size());
    families_.push_back(Family{entry, {}});
    by_family_.insert(hash, *index);
  }
  families_[*index].by_log_tokens.emplace_back(std::log(double(entries_[entry].answer.measured_tokens)), entry);
}

std::optional<Answer> Lookup::exact(const ShapeView& shape, uint64_t hash) const {
  const std::optional<uint32_t> entry =
      by_shape_.find(hash, [&](uint32_t e) { return same_shape(view_of(entries_[e].shape), shape); });
  if (!entry) return std::nullopt;
  return entries_[*entry].answer;
}

std::optional<Answer> Lookup::nearest(const ShapeView& shape) const {
  const int64_t tokens = shape.total_tokens();
  if (tokens <= 0) return std::nullopt;
  const std::optional<uint32_t> index =
      by_family_.find(family_hash(shape), [&](uint32_t f) { return same_family(family_shape(f), shape); });
  if (!index) return std::nullopt;
  // Log distance: 8k is as near to 4k as to 16k, the way cost grows with sequence length.
  const auto& sorted = families_[*index].by_log_tokens;
  const double log_tokens = std::log(double(tokens));
  // Of the two measured lengths around the query, the closer; a tie goes to the longer.
  const auto above = std::lower_bound(sorted.begin(), sorted.end(), std::pair{log_tokens, uint32_t(0)});
  const bool below_closer = above != sorted.begin() &&
                            (above == sorted.end() || log_tokens - std::prev(above)->first < above->first - log_tokens);
  const auto best = below_closer ? std::prev(above) : above;
  Answer answer = entries_[best->second].answer;
  answer.source = Source::nearest;
  return answer;
}

std::optional<Answer> Lookup::query(const ShapeView& shape) const {
  if (std::optional<Answer> hit = exact(shape, shape_hash(shape))) return hit;
  if (std::optional<Answer> near = nearest(shape)) return near;
  if (!fallback_) return std::nullopt;
  std::optional<Answer> simulated = fallback_(shape_of(shape));
  if (simulated) {
    simulated->source = Source::simulated;
    simulated->measured_tokens = 0;
  }
  return simulated;
}

}  // namespace cptune::db
