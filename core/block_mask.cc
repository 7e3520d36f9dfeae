#include "core/block_mask.h"

#include <algorithm>
#include <charconv>
#include <climits>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/hash.h"

namespace cptune {
namespace {

using std::to_string;


char cell_char(BlockKind k) { return k == BlockKind::full ? 'F' : k == BlockKind::causal ? 'C' : '.'; }

bool cell_of(char c, BlockKind& out) {
  switch (c) {
    case '.':
      out = BlockKind::empty;
      return true;
    case 'F':
    case 'f':
      out = BlockKind::full;
      return true;
    case 'C':
    case 'c':
      out = BlockKind::causal;
      return true;
  }
  return false;
}


void check_blocks(int64_t n, std::string_view where) {
  if (n < 1 || n > kMaxMaskBlocks)
    throw Error("block count " + to_string(n) + " in " + std::string(where) + " must be in [1, " +
                to_string(kMaxMaskBlocks) + "]");
}

// Rows of cell characters, one string per query block; blanks inside a row are skipped.
BlockTable table_of_rows(int64_t n, const std::vector<std::string>& rows, std::string_view source) {
  check_blocks(n, source);
  if (static_cast<int64_t>(rows.size()) != n)
    throw Error(std::string(source) + ": " + to_string(rows.size()) + " rows for " + to_string(n) +
                " blocks; a table has one row per block");
  std::vector<BlockKind> cells;
  cells.reserve(static_cast<size_t>(n * n));
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t width = 0;
    for (char c : rows[r]) {
      if (c == ' ' || c == '\t') continue;
      BlockKind k;
      if (!cell_of(c, k))
        throw Error(std::string(source) + ": row " + to_string(r) + " has '" + std::string(1, c) +
                    "'; cells are '.' (empty), 'F' (full) or 'C' (causal)");
      cells.push_back(k);
      ++width;
    }
    if (width != n)
      throw Error(std::string(source) + ": row " + to_string(r) + " has " + to_string(width) + " cells, not " +
                  to_string(n));
  }
  return BlockTable(n, std::move(cells));
}

int64_t parse_int(std::string_view s, std::string_view what, std::string_view text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    throw Error("bad " + std::string(what) + " '" + std::string(s) + "' in mask '" + std::string(text) + "'");
  return v;
}

// One named pattern: its parameters (N first, the rest each in [lo, N]) and the kind of cell
// (qb, kb) given the parameters after N, as block_mask.h defines them.
struct Param {
  std::string_view name;
  int64_t lo;
};
struct Pattern {
  std::string_view name;
  std::vector<Param> params;
  BlockKind (*cell)(int64_t qb, int64_t kb, std::span<const int64_t> p);
};

// C on the diagonal, F below it where `below` says so.
BlockKind causal_with(int64_t qb, int64_t kb, bool below) {
  if (kb == qb) return BlockKind::causal;
  return kb < qb && below ? BlockKind::full : BlockKind::empty;
}

const Pattern kPatterns[] = {
    {"strided", {{"N", 1}, {"S", 1}},
     [](int64_t q, int64_t k, std::span<const int64_t> p) { return causal_with(q, k, q - k < p[0] || (q - k) % p[0] == 0); }},
    {"global-local", {{"N", 1}, {"G", 0}, {"W", 0}},
     [](int64_t q, int64_t k, std::span<const int64_t> p) {
       return q < p[0] || k < p[0] || std::abs(q - k) <= p[1] ? BlockKind::full : BlockKind::empty;
     }},
    {"star", {{"N", 1}}, [](int64_t q, int64_t k, std::span<const int64_t>) { return causal_with(q, k, k == 0); }},
    {"stream", {{"N", 1}, {"SINK", 0}, {"LOCAL", 1}},
     [](int64_t q, int64_t k, std::span<const int64_t> p) { return causal_with(q, k, k < p[0] || q - k < p[1]); }},
};

// "strided:N,S"
std::string usage_of(const Pattern& p) {
  std::string out(p.name);
  for (size_t i = 0; i < p.params.size(); ++i) out += (i ? "," : ":") + std::string(p.params[i].name);
  return out;
}

std::string pattern_names() {
  std::string out;
  for (const Pattern& p : kPatterns) out += (out.empty() ? "" : ", ") + std::string(p.name);
  return out;
}

}  // namespace

int64_t causal_pairs(int64_t qa, int64_t qb, int64_t ka, int64_t kb) {
  // count(i) = clamp(i + 1 - ka, 0, kb - ka), summed over i.
  const int64_t lo = qa + 1 - ka, hi = qb + 1 - ka, cap = kb - ka;
  if (hi <= lo || cap <= 0) return 0;
  int64_t total = 0;
  const int64_t a = std::max<int64_t>(lo, 0), b = std::min(hi, cap);
  if (b > a) total += (a + b - 1) * (b - a) / 2;
  const int64_t at_cap = hi - std::max(lo, cap);
  if (at_cap > 0) total += at_cap * cap;
  return total;
}

BlockTable::BlockTable(int64_t n, std::vector<BlockKind> cells, std::string name)
    : n_(n), cells_(std::move(cells)), name_(std::move(name)) {
  check_blocks(n, "a block table");
  if (static_cast<int64_t>(cells_.size()) != n * n)
    throw Error("a block table of " + to_string(n) + " blocks needs " + to_string(n * n) + " cells, got " +
                to_string(cells_.size()));
  uint64_t h = hash_mix(0x626c6f636b73ULL ^ uint64_t(n));  // "blocks"
  for (size_t i = 0; i < cells_.size(); i += 8) {
    uint64_t word = 0;
    for (size_t b = i; b < std::min(cells_.size(), i + 8); ++b) word = (word << 8) | uint64_t(cells_[b]);
    h = hash_combine(h, word);
  }
  hash_ = h;
  if (name_.empty()) name_ = inline_text(*this);
}

int64_t BlockTable::count(BlockKind kind) const { return std::count(cells_.begin(), cells_.end(), kind); }

int64_t BlockTable::pairs(int64_t len, int64_t qa, int64_t qb, int64_t ka, int64_t kb) const {
  if (qb <= qa || kb <= ka) return 0;
  const auto end_of = [&](int64_t b) { return b == n_ - 1 ? INT64_MAX : block_begin(len, n_, b + 1); };
  const int64_t q0 = block_of(len, n_, qa), q1 = block_of(len, n_, qb - 1);
  const int64_t k0 = block_of(len, n_, ka), k1 = block_of(len, n_, kb - 1);
  int64_t total = 0;
  for (int64_t q = q0; q <= q1; ++q) {
    const int64_t qlo = std::max(qa, block_begin(len, n_, q)), qhi = std::min(qb, end_of(q));
    if (qhi <= qlo) continue;
    const BlockKind* row = cells_.data() + q * n_;
    for (int64_t k = k0; k <= k1; ++k) {
      if (row[k] == BlockKind::empty) continue;
      const int64_t klo = std::max(ka, block_begin(len, n_, k)), khi = std::min(kb, end_of(k));
      if (khi <= klo) continue;
      total += row[k] == BlockKind::full ? (qhi - qlo) * (khi - klo) : causal_pairs(qlo, qhi, klo, khi);
    }
  }
  return total;
}

std::string inline_text(const BlockTable& t) {
  std::string out = "blocks:" + to_string(t.n()) + ":";
  out.reserve(out.size() + static_cast<size_t>(t.n() * (t.n() + 1)));
  for (int64_t q = 0; q < t.n(); ++q) {
    if (q) out += '/';
    for (int64_t k = 0; k < t.n(); ++k) out += cell_char(t.at(q, k));
  }
  return out;
}

std::string rows_text(const BlockTable& t) {
  std::string out;
  for (int64_t q = 0; q < t.n(); ++q) {
    for (int64_t k = 0; k < t.n(); ++k) {
      if (k) out += ' ';
      out += cell_char(t.at(q, k));
    }
    out += '\n';
  }
  return out;
}

BlockTable parse_block_table(std::string_view text, std::string_view source) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) throw Error(std::string(source) + ": empty block table");
  if (text[first] == '{') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw Error(std::string(source) + ": not valid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("blocks") || !j["blocks"].is_number_integer() || !j.contains("rows") ||
        !j["rows"].is_array())
      throw Error(std::string(source) + ": a JSON block table is {\"blocks\": N, \"rows\": [\"C...\", ...]}");
    std::vector<std::string> rows;
    for (const auto& r : j["rows"]) {
      if (!r.is_string()) throw Error(std::string(source) + ": every row is a string of '.', 'F', 'C'");
      rows.push_back(r.get<std::string>());
    }
    return table_of_rows(j["blocks"].get<int64_t>(), rows, source);
  }
  // Text: lines, '#' comments and blank lines dropped; the first is N, the rest the rows.
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    if (const size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    const size_t a = line.find_first_not_of(" \t\r"), b = line.find_last_not_of(" \t\r");
    if (a != std::string_view::npos) lines.emplace_back(line.substr(a, b - a + 1));
    pos = nl + 1;
  }
  if (lines.empty()) throw Error(std::string(source) + ": empty block table");
  const int64_t n = parse_int(lines[0], "block count", source);
  return table_of_rows(n, std::vector<std::string>(lines.begin() + 1, lines.end()), source);
}

std::string block_pattern_usages() {
  std::string out;
  for (const Pattern& p : kPatterns) out += (out.empty() ? "" : ", ") + usage_of(p);
  return out;
}

bool is_block_pattern(std::string_view text) {
  const std::string_view head = text.substr(0, text.find(':'));
  return std::any_of(std::begin(kPatterns), std::end(kPatterns), [&](const Pattern& p) { return p.name == head; });
}

BlockTable block_pattern(std::string_view text) {
  const size_t colon = text.find(':');
  const std::string_view head = text.substr(0, colon);
  const Pattern* pattern = nullptr;
  for (const Pattern& p : kPatterns)
    if (p.name == head) pattern = &p;
  if (!pattern) throw Error("unknown block pattern '" + std::string(text) + "'; choose " + pattern_names());
  if (colon == std::string_view::npos)
    throw Error("mask '" + std::string(text) + "' needs its parameters; write " + usage_of(*pattern));
  std::vector<int64_t> v;
  std::string_view rest = text.substr(colon + 1);
  while (true) {
    const size_t comma = rest.find(',');
    v.push_back(parse_int(rest.substr(0, comma), "number", text));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  if (v.size() != pattern->params.size())
    throw Error("mask '" + std::string(text) + "' has " + to_string(v.size()) + " parameters; write " +
                usage_of(*pattern));
  const int64_t n = v[0];
  check_blocks(n, "mask '" + std::string(text) + "'");
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] < pattern->params[i].lo || v[i] > n)
      throw Error(std::string(pattern->params[i].name) + " = " + to_string(v[i]) + " in mask '" + std::string(text) +
                  "' must be in [" + to_string(pattern->params[i].lo) + ", " + to_string(n) + "]");
  const std::span<const int64_t> after_n = std::span(v).subspan(1);
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  std::string name(pattern->name);
  for (size_t i = 0; i < v.size(); ++i) name += (i ? "," : ":") + to_string(v[i]);
  for (int64_t q = 0; q < n; ++q)
    for (int64_t k = 0; k < n; ++k) cells[static_cast<size_t>(q * n + k)] = pattern->cell(q, k, after_n);
  return BlockTable(n, std::move(cells), std::move(name));
}

}  // namespace cptune
