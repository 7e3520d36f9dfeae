#include "tuner/attention_points.h"

#include <charconv>
#include <cmath>
#include <set>

#include <fmt/format.h>

#include "core/error.h"

namespace cptune::tuner {
namespace {

// One CSV line: fields split at commas outside double quotes ("" inside quotes is a quote).
std::vector<std::string> csv_fields(std::string_view line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') out.back() += '"', ++i;
    else if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) out.emplace_back();
    else out.back() += c;
  }
  return out;
}

template <typename T>
bool parse_number(const std::string& s, T& v) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if constexpr (std::is_floating_point_v<T>)
    if (!std::isfinite(v)) return false;
  return ec == std::errc() && end == s.data() + s.size();
}

constexpr const char* kHeader = "device,kernel,pass,mask,seqlen,batch,heads,head_dim,tflops,source";

}  // namespace

std::vector<AttentionPointRow> parse_attention_points(std::string_view text, const std::string& file) {
  std::vector<AttentionPointRow> rows;
  int number = 0;
  bool header = false;
  for (size_t begin = 0; begin < text.size();) {
    const size_t newline = std::min(text.find('\n', begin), text.size());
    std::string_view line = text.substr(begin, newline - begin);
    begin = newline + 1;
    ++number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    auto fail = [&](const std::string& what) { throw Error(fmt::format("attention points {} line {}: {}", file, number, what)); };
    if (!header) {
      if (line != kHeader) fail(fmt::format("the header must be '{}'", kHeader));
      header = true;
      continue;
    }
    const std::vector<std::string> f = csv_fields(line);
    if (f.size() != 10) fail(fmt::format("{} fields; expected 10 ({})", f.size(), kHeader));
    AttentionPointRow r;
    r.line = number;
    r.device = f[0], r.kernel = f[1], r.pass = f[2], r.mask = f[3], r.source = f[9];
    if (!parse_number(f[4], r.seqlen) || !parse_number(f[5], r.batch) || !parse_number(f[6], r.heads) ||
        !parse_number(f[7], r.head_dim) || !parse_number(f[8], r.tflops))
      fail("seqlen, batch, heads and head_dim must be whole numbers and tflops a finite number");
    if (r.seqlen < 1 || r.seqlen > (int64_t(1) << 24) || r.batch < 1 || r.batch > 65536 || r.heads < 1 || r.heads > 4096 ||
        r.head_dim < 1 || r.head_dim > 1024)
      fail("seqlen (1-16M), batch (1-65536), heads (1-4096) or head_dim (1-1024) out of range");
    if (!(r.tflops > 0) || r.tflops > 1e5) fail(fmt::format("tflops {} must be in (0, 1e5]", r.tflops));
    if (r.pass != "fwd" && r.pass != "fwd-bwd") fail("pass '" + r.pass + "' is not fwd or fwd-bwd");
    if (r.mask != "full" && r.mask != "causal") fail("mask '" + r.mask + "' is not full or causal");
    if (r.source.empty()) fail("every point needs its source");
    rows.push_back(std::move(r));
  }
  if (!header) throw Error(fmt::format("attention points {}: no header line '{}'", file, kHeader));
  return rows;
}

std::vector<sim::AttentionPoint> attention_points_of(const std::vector<AttentionPointRow>& rows, const std::string& device,
                                                     const std::optional<std::string>& kernel) {
  std::vector<sim::AttentionPoint> points;
  std::set<std::string> have;
  for (const AttentionPointRow& r : rows) {
    have.insert(r.device + "/" + r.kernel);
    if (r.device != device || (kernel && r.kernel != *kernel)) continue;
    const bool causal = r.mask == "causal";
    // The FLOPs the published rate divides (FlashAttention's count), and the model's exact pairs.
    const double counted = 4.0 * double(r.seqlen) * double(r.seqlen) * double(r.head_dim) * double(r.heads) *
                           double(r.batch) * (causal ? 0.5 : 1.0);
    const int64_t pairs = causal ? r.seqlen * (r.seqlen + 1) / 2 : r.seqlen * r.seqlen;
    sim::AttentionPoint p;
    p.call = {r.seqlen, r.batch * r.heads, r.head_dim, pairs * 4 * r.head_dim * r.heads * r.batch};
    p.seconds = counted / (r.tflops * 1e12);
    p.source = fmt::format("{} {} {} {} S={} B={} H={} D={}: {} TFLOP/s ({})", r.device, r.kernel, r.pass, r.mask, r.seqlen,
                           r.batch, r.heads, r.head_dim, r.tflops, r.source);
    points.push_back(std::move(p));
  }
  if (points.empty()) {
    std::string list;
    for (const std::string& h : have) list += (list.empty() ? "" : ", ") + h;
    throw Error(fmt::format("no attention points for device '{}'{}; the file has {}", device,
                            kernel ? " kernel '" + *kernel + "'" : std::string(), list.empty() ? "none" : list));
  }
  return points;
}

}  // namespace cptune::tuner
