#include "db/lookup.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "db/local_fingerprint.h"
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

namespace {

// Each shape's fastest measurement under fingerprint `id` that the filter allows; a shape
// whose every measurement is refused has no row.
std::vector<BestRow> best_allowed(const Store& store, int64_t id, Pass pass, const Filter& filter) {
  std::vector<BestRow> rows;
  std::unordered_multimap<uint64_t, size_t> by_hash;
  for (StoredMeasurement& m : store.measurements()) {
    if (m.fingerprint_id != id || m.pass != pass || !filter(m.row.candidate, view_of(m.shape))) continue;
    const uint64_t hash = shape_hash(view_of(m.shape));
    BestRow* same = nullptr;
    for (auto [it, end] = by_hash.equal_range(hash); it != end && !same; ++it)
      if (rows[it->second].shape == m.shape) same = &rows[it->second];
    if (!same) {
      by_hash.emplace(hash, rows.size());
      rows.push_back(BestRow{id, std::move(m.shape), pass, m.row.candidate, m.row.median_s, 1});
      continue;
    }
    ++same->measurements;
    if (m.row.median_s < same->median_s) {
      same->candidate = m.row.candidate;
      same->median_s = m.row.median_s;
    }
  }
  return rows;
}

std::string reason_for(const Store& store, const std::string& db_path, const Fingerprint& fp,
                       std::optional<int64_t> id, bool filtered, Pass pass) {
  const auto summaries = store.fingerprints();
  if (id) {
    for (const auto& s : summaries)
      if (s.id == *id)
        return "database '" + db_path + "' holds " + std::to_string(s.shapes) + " shape(s) for fingerprint " +
               describe_full(s.fingerprint) + ", none of this shape's family (same heads, head dims, dtype, mask, "
               "batch)" + (pass == Pass::forward ? "" : " timed for --pass " + std::string(to_string(pass))) +
               (filtered ? " with a layout the caller's constraints allow" : "");
  }
  std::vector<Fingerprint> fps;
  for (const auto& s : summaries) fps.push_back(s.fingerprint);
  const int closest = closest_fingerprint(fp, fps);
  std::string out = "database '" + db_path + "' has no measurements for fingerprint " + describe_full(fp);
  if (closest < 0) return out + "; it holds none at all";
  return out + "; the closest it holds is " + describe_full(fps[size_t(closest)]) + " (" +
         std::to_string(summaries[size_t(closest)].shapes) + " shapes; `cptune db list --db " + db_path +
         "` lists all " + std::to_string(fps.size()) + ")";
}

}  // namespace

Lookup Lookup::open(const std::string& db_path, const Fingerprint& fp, Fallback fallback, Filter filter, Pass pass) {
  const Store store = Store::open_read_only(db_path);
  const std::optional<int64_t> id = store.match_fingerprint(fp);
  std::vector<BestRow> rows;
  if (id) rows = filter ? best_allowed(store, *id, pass, filter) : store.best(*id, pass);
  Lookup lookup(std::move(rows), std::move(fallback));
  lookup.filter_ = std::move(filter);
  lookup.fingerprint_id_ = id;
  lookup.not_found_reason_ = reason_for(store, db_path, fp, id, bool(lookup.filter_), pass);
  return lookup;
}

Lookup Lookup::without_database(Fallback fallback, Filter filter, std::string reason) {
  Lookup lookup({}, std::move(fallback));
  lookup.filter_ = std::move(filter);
  lookup.not_found_reason_ = std::move(reason);
  return lookup;
}

std::string Lookup::why_not(const ShapeView& shape) const {
  if (!fallback_)
    return not_found_reason_ + ", and no simulator answer" +
           (explain_ ? ": " + explain_(shape_of(shape)) : std::string(" (give a hardware description for one)"));
  const std::string rule = explain_ ? explain_(shape_of(shape)) : "";
  return not_found_reason_ + ", and the simulator found no layout allowed here" + (rule.empty() ? "" : ": " + rule);
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
  if (filter_ && !filter_(answer.choice, shape)) return std::nullopt;  // e.g. a divisibility rule
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
