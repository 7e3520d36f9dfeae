#include "tuner/cli/shapes_file.h"

#include <algorithm>
#include <map>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/read_file.h"
#include "tuner/cli/shape_options.h"

namespace cptune::cli {
namespace {

std::string trim(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

// Splits one CSV line; a double-quoted cell may hold commas.
std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (char c : line) {
    if (c == '"')
      quoted = !quoted;
    else if (c == ',' && !quoted)
      cells.emplace_back();
    else
      cells.back() += c;
  }
  for (std::string& cell : cells) cell = trim(cell);
  return cells;
}

// A pattern's parameters may be separated by ';' in a shapes file ("strided:16;4"), so the cell
// needs no quotes; a table file's name (blocks:FILE) is taken as written.
std::string mask_cell(std::string text) {
  if (text.rfind("blocks:", 0) != 0) std::replace(text.begin(), text.end(), ';', ',');
  return text;
}

const std::vector<std::string> kColumns{"seq", "heads", "kv_heads", "head_dim", "v_head_dim", "dtype", "mask", "batch"};

}  // namespace

std::vector<AttentionShape> read_shapes_file(const std::string& path) {
  // A regular file of bounded size: a FIFO, /dev/zero or a directory is refused, not waited on.
  std::istringstream in(read_regular_file(path, "shapes file"));
  std::string line;
  int line_no = 0;
  std::map<std::string, size_t> column;
  std::vector<AttentionShape> shapes;
  // A shape listed twice is measured once: the first line that names it keeps its place.
  std::unordered_map<uint64_t, std::vector<size_t>> seen;
  const auto first_time = [&](const AttentionShape& shape) {
    std::vector<size_t>& same_hash = seen[shape_hash(view_of(shape))];
    for (size_t i : same_hash)
      if (shapes[i] == shape) return false;
    same_hash.push_back(shapes.size());
    return true;
  };
  while (std::getline(in, line)) {
    if (line_no == 0 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // a UTF-8 byte order mark
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trim(line).empty() || trim(line)[0] == '#') continue;
    const std::vector<std::string> cells = split_csv(line);
    const std::string where = path + " line " + std::to_string(line_no);
    if (column.empty()) {
      for (size_t i = 0; i < cells.size(); ++i) {
        if (std::find(kColumns.begin(), kColumns.end(), cells[i]) == kColumns.end())
          throw Error(where + ": unknown column '" + cells[i] + "'; columns are seq, heads, kv_heads, head_dim, "
                      "v_head_dim, dtype, mask, batch");
        if (!column.emplace(cells[i], i).second)  // else a row's cell count would not match the map's
          throw Error(where + ": column '" + cells[i] + "' is named twice");
      }
      if (!column.count("seq") || !column.count("heads"))
        throw Error(where + ": the header row must name at least the columns seq and heads");
      continue;
    }
    if (cells.size() != column.size())
      throw Error(where + ": " + std::to_string(cells.size()) + " cells, the header has " +
                  std::to_string(column.size()) +
                  (cells.size() > column.size() && line.find(':') != std::string::npos
                       ? std::string("; a mask with commas is quoted (\"strided:16,4\") or written with ';' "
                                     "(strided:16;4)")
                       : std::string()));
    auto cell = [&](const std::string& name) { return column.count(name) ? cells[column[name]] : std::string(); };
    auto number = [&](const std::string& name, int64_t fallback) -> int64_t {
      const std::string text = cell(name);
      if (text.empty()) return fallback;
      try {
        return parse_count(text, name);
      } catch (const Error& e) {
        throw Error(where + ": " + e.what());
      }
    };
    try {
      ShapeArgs args;
      std::string seq = cell("seq");
      std::replace(seq.begin(), seq.end(), '+', ',');
      std::replace(seq.begin(), seq.end(), ';', ',');
      args.seq_list = seq;
      args.heads = number("heads", 0);
      args.kv_heads = number("kv_heads", 0);
      args.head_dim = number("head_dim", 128);
      args.v_head_dim = number("v_head_dim", 0);
      args.batch = number("batch", 1);
      if (!cell("dtype").empty()) args.dtype = cell("dtype");
      if (!cell("mask").empty()) args.mask = mask_cell(cell("mask"));
      if (seq.empty()) throw Error("empty seq cell");
      AttentionShape shape = to_shape(args);
      if (first_time(shape)) shapes.push_back(std::move(shape));
    } catch (const Error& e) {
      const std::string what = e.what();
      throw Error(what.rfind(where, 0) == 0 ? what : where + ": " + what);
    }
  }
  if (column.empty()) throw Error("shapes file '" + path + "' is empty; it needs a header row and one shape per line");
  if (shapes.empty()) throw Error("shapes file '" + path + "' has a header but no shapes");
  return shapes;
}

}  // namespace cptune::cli
