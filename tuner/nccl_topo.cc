#include "tuner/nccl_topo.h"

#include <algorithm>
#include <cmath>
#include <cctype>
#include <map>
#include <numeric>
#include <set>

#include <fmt/format.h>
#include <tinyxml2.h>

#include "core/error.h"

namespace cptune::tuner {
namespace {

constexpr int kMaxDepth = 64;  // NCCL dumps nest under 15 deep (system, cpu, a few PCIe switches, gpu, nvlink)

// What a tinyxml2 error means, in words; its own text (element names) follows.
std::string xml_problem(tinyxml2::XMLError e) {
  switch (e) {
    case tinyxml2::XML_ERROR_MISMATCHED_ELEMENT: return "a closing tag does not match the element it closes";
    case tinyxml2::XML_ERROR_PARSING_ELEMENT: return "an element is malformed or not closed";
    case tinyxml2::XML_ERROR_PARSING_ATTRIBUTE: return "an attribute is malformed (values must be quoted)";
    case tinyxml2::XML_ERROR_PARSING_TEXT: return "text cannot be read";
    case tinyxml2::XML_ERROR_PARSING_COMMENT: return "a comment is not closed";
    case tinyxml2::XML_ERROR_PARSING_DECLARATION: return "an <?xml ...?> declaration is malformed";
    case tinyxml2::XML_ERROR_PARSING_UNKNOWN: return "a <!...> declaration is not closed";
    case tinyxml2::XML_ERROR_EMPTY_DOCUMENT: return "no root element";
    case tinyxml2::XML_ELEMENT_DEPTH_EXCEEDED: return "elements nest too deep for an NCCL topology dump";
    default: return "not well-formed XML";
  }
}

// tinyxml2's DOM as XmlElements, refusing what an NCCL dump never holds: text between elements
// and elements nested deeper than kMaxDepth (tinyxml2 itself stops at 100, so nothing recurses
// further).
XmlElement convert(const tinyxml2::XMLElement& in, const std::string& file, int depth) {
  if (depth > kMaxDepth)
    throw Error(fmt::format("NCCL topology file {} line {}: <{}> is nested {} deep; an NCCL dump nests under {}", file,
                            in.GetLineNum(), in.Name(), depth, kMaxDepth));
  XmlElement e;
  e.name = in.Name();
  e.line = in.GetLineNum();
  for (const tinyxml2::XMLAttribute* a = in.FirstAttribute(); a; a = a->Next()) e.attributes.emplace_back(a->Name(), a->Value());
  for (const tinyxml2::XMLNode* c = in.FirstChild(); c; c = c->NextSibling()) {
    if (const tinyxml2::XMLElement* child = c->ToElement()) {
      e.children.push_back(convert(*child, file, depth + 1));
    } else if (const tinyxml2::XMLText* text = c->ToText()) {
      const std::string_view t = text->Value();
      const size_t at = t.find_first_not_of(" \t\r\n");
      if (at != std::string_view::npos) {
        const std::string_view shown = t.substr(at, std::min<size_t>(40, t.find_last_not_of(" \t\r\n") + 1 - at));
        throw Error(fmt::format("NCCL topology file {} line {}: text '{}' inside <{}> is not part of the format", file,
                                c->GetLineNum(), shown, e.name));
      }
    }  // comments, <!DOCTYPE> and other declarations carry nothing
  }
  return e;
}

[[noreturn]] void fail_at(const std::string& file, const XmlElement& e, const std::string& what) {
  throw Error(fmt::format("NCCL topology file {} line {}: <{}> {}", file, e.line, e.name, what));
}

int int_attr(const std::string& file, const XmlElement& e, std::string_view key) {
  const std::string& v = e.attr(key);
  try {
    size_t used = 0;
    const int out = std::stoi(v, &used, 0);
    if (used == v.size()) return out;
  } catch (const std::exception&) {
  }
  fail_at(file, e, fmt::format("attribute {}=\"{}\" is not a whole number", key, v));
}

// "16.0 GT/s PCIe" x width "16" -> bytes/s per direction. Gen1/2 (2.5, 5 GT/s) encode 8b/10b,
// Gen3 and later 128b/130b (PCIe base specification 3.0, 4.2.2). 0 when the dump does not know:
// inside cloud VMs the GPUs' PCI nodes often read link_speed="" link_width="0" (the GPU is passed
// through with no visible switch; Azure's NC A100 v4 file, tests/fixtures/nccl_topo_azure_ncv4_vm.xml).
double pcie_bytes_per_s(const std::string& file, const XmlElement& e) {
  const std::string& speed = e.attr("link_speed");
  const std::string& width = e.attr("link_width");
  if (speed.empty() || width.empty()) return 0;
  double gts = 0;
  try {
    gts = std::stod(speed);
  } catch (const std::exception&) {
    fail_at(file, e, fmt::format("link_speed=\"{}\" is not 'N GT/s'", speed));
  }
  const int lanes = int_attr(file, e, "link_width");
  if (lanes == 0 || gts == 0) return 0;
  if (!(gts > 0) || !std::isfinite(gts) || gts > 1000 || lanes < 0 || lanes > 32)
    fail_at(file, e, fmt::format("link_speed \"{}\" x width {} is no PCIe link (1..32 lanes, up to 64 GT/s today)", speed, lanes));
  const double encoding = gts < 8 ? 8.0 / 10.0 : 128.0 / 130.0;
  return gts * 1e9 * lanes * encoding / 8;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_bridge(const XmlElement& pci) { return pci.attr("class").rfind("0x0604", 0) == 0; }

struct Walker {
  const std::string& file;
  TopoHost host;

  void nic(const XmlElement& e) {
    for (const XmlElement& net : e.children) {
      if (net.name != "net") continue;
      const int mbps = int_attr(file, net, "speed");
      if (mbps < 0) fail_at(file, net, fmt::format("speed=\"{}\" is negative; NCCL writes the port's Mb/s", mbps));
      if (mbps == 0) {
        host.notes.push_back(fmt::format("<net name=\"{}\"> on line {} has speed 0 (a port that is down?): left out of the network level",
                                         net.attr("name"), net.line));
        continue;
      }
      host.nic_bytes_per_s += double(mbps) * 1e6 / 8;
      ++host.nics;
    }
  }

  // `bridges`: the PCIe switches above, outermost first, each with its link to its parent.
  void walk(const XmlElement& e, int numa, std::vector<const XmlElement*>& bridges) {
    for (const XmlElement& c : e.children) {
      if (c.name == "cpu") {
        if (host.cpu_vendor.empty()) host.cpu_vendor = c.attr("vendor");
        walk(c, c.attr("numaid").empty() ? 0 : int_attr(file, c, "numaid"), bridges);
      } else if (c.name == "nic") {
        nic(c);
      } else if (c.name == "pci" && is_bridge(c)) {
        bridges.push_back(&c);
        walk(c, numa, bridges);
        bridges.pop_back();
      } else if (c.name == "pci") {
        bool has_gpu = false;
        for (const XmlElement& g : c.children) {
          if (g.name == "gpu") gpu(c, g, numa, bridges), has_gpu = true;
          else if (g.name == "nic") nic(g);
        }
        // Cloud providers' static NCCL_TOPO_FILEs (Azure's ndv2/ndv4 files) list GPUs as bare
        // <pci class="0x0302..."> and let NCCL fill in the rest: no sm, no NVLinks to import.
        if (!has_gpu && c.attr("class").rfind("0x0302", 0) == 0)
          host.notes.push_back(fmt::format("<pci busid=\"{}\"> on line {} is a GPU with no <gpu> inside (a static NCCL_TOPO_FILE, not a "
                                           "dump?): left out; dump the topology with NCCL_TOPO_DUMP_FILE",
                                           c.attr("busid"), c.line));
      }
    }
  }

  void gpu(const XmlElement& pci, const XmlElement& g, int numa, const std::vector<const XmlElement*>& bridges) {
    TopoGpu gpu;
    if (g.attr("sm").empty()) fail_at(file, g, "has no sm attribute (the GPU generation)");
    gpu.sm = int_attr(file, g, "sm");
    gpu.dev = g.attr("dev").empty() ? int(host.gpus.size()) : int_attr(file, g, "dev");
    gpu.rank = g.attr("rank").empty() ? -1 : int_attr(file, g, "rank");
    gpu.busid = pci.attr("busid");
    gpu.numa = numa;
    for (const XmlElement* b : bridges) gpu.switches.push_back(b->attr("busid"));
    gpu.pcie_bytes_per_s = pcie_bytes_per_s(file, pci);
    if (!bridges.empty()) gpu.switch_uplink_bytes_per_s = pcie_bytes_per_s(file, *bridges.back());
    if (!bridges.empty()) gpu.tree_uplink_bytes_per_s = pcie_bytes_per_s(file, *bridges.front());
    if (gpu.pcie_bytes_per_s == 0) gpu.pcie_bytes_per_s = gpu.switch_uplink_bytes_per_s;
    gpu.pcie_unknown = gpu.pcie_bytes_per_s == 0;  // hardware_from_topology takes the base preset's lane
    for (const XmlElement& l : g.children) {
      if (l.name != "nvlink") continue;
      const int count = int_attr(file, l, "count");
      if (count < 0 || count > 64) fail_at(file, l, fmt::format("count=\"{}\" is no number of NVLinks (0..64)", count));
      const bool nvswitch = l.attr("tclass") == "0x068000";
      const bool to_gpu = l.attr("tclass").rfind("0x03", 0) == 0;
      if (to_gpu && lower(l.attr("target")) == lower(gpu.busid)) {
        // Azure's NC A100 v4 file points each GPU's bridge NVLink at the GPU itself.
        host.notes.push_back(fmt::format("<nvlink> on line {} of GPU {} targets the GPU itself ({}): ignored", l.line, gpu.busid,
                                         l.attr("target")));
        continue;
      }
      if ((nvswitch || to_gpu) && count > 0) gpu.nvlinks.emplace_back(nvswitch ? "nvswitch" : l.attr("target"), count);
    }
    host.gpus.push_back(std::move(gpu));
  }
};

// A grouping of the GPUs: group id per GPU (dense, by first appearance).
using Partition = std::vector<int>;

template <class Key>
Partition partition_by(const std::vector<TopoGpu>& gpus, Key key) {
  std::map<decltype(key(gpus[0])), int> ids;
  Partition p;
  for (const TopoGpu& g : gpus) p.push_back(ids.emplace(key(g), int(ids.size())).first->second);
  return p;
}

// Connected components over direct GPU-GPU NVLinks and a shared NVSwitch.
Partition nvlink_partition(const std::vector<TopoGpu>& gpus) {
  std::vector<int> parent(gpus.size());
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int a) {
    while (parent[a] != a) a = parent[a] = parent[parent[a]];
    return a;
  };
  int nvswitch = -1;
  for (size_t a = 0; a < gpus.size(); ++a)
    for (const auto& [target, count] : gpus[a].nvlinks) {
      int b = -1;
      if (target == "nvswitch") b = nvswitch < 0 ? (nvswitch = int(a)) : nvswitch;
      for (size_t k = 0; k < gpus.size() && b < 0; ++k)
        if (lower(gpus[k].busid) == lower(target)) b = int(k);
      if (b >= 0) parent[find(int(a))] = find(b);
    }
  return partition_by(gpus, [&](const TopoGpu& g) { return find(int(&g - gpus.data())); });
}

int group_size(const Partition& p) {  // 0 when the groups differ in size
  std::map<int, int> sizes;
  for (int g : p) ++sizes[g];
  int size = sizes.begin()->second;
  for (const auto& [g, n] : sizes)
    if (n != size) return 0;
  return size;
}

bool coarser_or_equal(const Partition& coarse, const Partition& fine) {
  std::map<int, int> of;
  for (size_t i = 0; i < fine.size(); ++i)
    if (!of.emplace(fine[i], coarse[i]).second && of[fine[i]] != coarse[i]) return false;
  return true;
}

// The GPU lane a PCIe preset states: its injection bandwidth, else its first PCIe level's link.
double base_pcie_lane(const sim::Hardware& base, const std::string& file) {
  if (base.injection_bytes_per_s > 0) return base.injection_bytes_per_s;
  for (const sim::Level& l : base.levels)
    if (l.name == "switch" || l.name == "pcie-tree" || l.name == "socket" || l.name == "host") return l.link.bandwidth_bytes_per_s;
  throw Error(fmt::format("NCCL topology file {}: the dump gives no PCIe speed for its GPUs (a VM?) and the base preset {} has no "
                          "PCIe numbers to use instead; give a PCIe preset as --base (a100-pcie, l20)",
                          file, base.name));
}

struct Candidate {
  sim::Level level;
  Partition groups;
  std::string why;
};

}  // namespace

const std::string& XmlElement::attr(std::string_view key) const {
  static const std::string none;
  for (const auto& [k, v] : attributes)
    if (k == key) return v;
  return none;
}

XmlElement parse_xml(std::string_view text, const std::string& file) {
  // Entities (&amp;, &#65;) decoded; no DTD or external entity is ever loaded.
  tinyxml2::XMLDocument doc(true, tinyxml2::PRESERVE_WHITESPACE);
  if (doc.Parse(text.data(), text.size()) != tinyxml2::XML_SUCCESS) {
    std::string detail = doc.ErrorStr();  // "Error=... ErrorID=... Line number=N: details"
    const size_t colon = detail.find(": ");
    detail = colon == std::string::npos ? "" : detail.substr(colon + 2);
    if (detail.rfind("XMLElement name=", 0) == 0) detail = "<" + detail.substr(16) + ">, opened on this line";
    throw Error(fmt::format("NCCL topology file {} line {}: {}{}", file, doc.ErrorLineNum(), xml_problem(doc.ErrorID()),
                            detail.empty() ? "" : " (" + detail + ")"));
  }
  const tinyxml2::XMLElement* root = doc.RootElement();
  if (!root) throw Error(fmt::format("NCCL topology file {}: no root element", file));
  if (const tinyxml2::XMLElement* extra = root->NextSiblingElement())
    throw Error(fmt::format("NCCL topology file {} line {}: <{}> after the root element </{}>; a dump has one <system>", file,
                            extra->GetLineNum(), extra->Name(), root->Name()));
  for (const tinyxml2::XMLNode* c = doc.FirstChild(); c; c = c->NextSibling()) {
    const tinyxml2::XMLText* t = c->ToText();
    const std::string_view text = t ? std::string_view(t->Value()) : std::string_view();
    const size_t at = text.find_first_not_of(" \t\r\n");
    if (at == std::string_view::npos) continue;
    // tinyxml2 reads "<!DOCTYPE x [ <!ENTITY ...> ]>" up to the first '>': the rest is text here.
    if (text[at] == ']')
      throw Error(fmt::format("NCCL topology file {}: a <!DOCTYPE> with an internal subset ([ ... ]) is not read; NCCL dumps "
                              "have none: remove it",
                              file));
    throw Error(fmt::format("NCCL topology file {} line {}: text outside the root element", file, c->GetLineNum()));
  }
  return convert(*root, file, 1);
}

double nvlink_bytes_per_s_per_link(int sm) { return sm >= 100 ? 50e9 : 25e9; }

TopoHost read_nccl_topology(std::string_view text, const std::string& file) {
  const XmlElement root = parse_xml(text, file);
  if (root.name != "system") fail_at(file, root, "is the root; an NCCL topology dump has <system version=\"1\">");
  Walker w{file, {}};
  std::vector<const XmlElement*> bridges;
  w.walk(root, 0, bridges);
  if (w.host.gpus.empty()) throw Error(fmt::format("NCCL topology file {}: no <gpu> element under <cpu>/<pci>", file));
  for (const TopoGpu& g : w.host.gpus)
    if (g.sm < 70) throw Error(fmt::format("NCCL topology file {}: GPU dev {} has sm {}; cptune knows sm 70 and newer", file, g.dev, g.sm));
  return w.host;
}

sim::Hardware hardware_from_topology(const TopoHost& host, const sim::Hardware& base, const std::string& file,
                                     const std::string& name, int64_t nodes, std::vector<std::string>* warnings) {
  std::vector<std::string> warns = host.notes;
  std::vector<TopoGpu> gpus = host.gpus;
  std::string unknown;
  for (TopoGpu& g : gpus)
    if (g.pcie_unknown) {
      g.pcie_bytes_per_s = base_pcie_lane(base, file);
      unknown += (unknown.empty() ? "" : ", ") + g.busid;
    }
  if (!unknown.empty())
    warns.push_back(fmt::format("the dump gives no PCIe link_speed / link_width for GPU(s) {} and no switch above them (GPUs "
                                "passed through to a VM?): their lane is {}'s PCIe number, {:.4g} GB/s",
                                unknown, base.name, base_pcie_lane(base, file) / 1e9));
  const int n = int(gpus.size());
  const double lane = std::min_element(gpus.begin(), gpus.end(), [](auto& a, auto& b) { return a.pcie_bytes_per_s < b.pcie_bytes_per_s; })
                          ->pcie_bytes_per_s;
  // Latencies: NCCL src/graph/tuning.cc hwLat[NVLINK|PCI|NET][Ring][Simple], as the presets cite.
  const double nvlink_alpha = 3.4e-6, pci_alpha = 5.7e-6, net_alpha = 9.6e-6;
  std::vector<Candidate> candidates;
  {
    const Partition p = nvlink_partition(gpus);
    // A rank's NVLink path: all its links into the group (an all-to-all drives them at once).
    double bw = 0;
    for (const TopoGpu& g : gpus) {
      int links = 0;
      for (const auto& [target, count] : g.nvlinks) links += count;
      const double b = links * nvlink_bytes_per_s_per_link(g.sm);
      bw = bw == 0 ? b : std::min(bw, b);
    }
    const bool nvswitch = std::any_of(gpus.begin(), gpus.end(), [](auto& g) {
      return std::any_of(g.nvlinks.begin(), g.nvlinks.end(), [](auto& l) { return l.first == "nvswitch"; });
    });
    candidates.push_back({{nvswitch ? "nvswitch" : "nvlink", 0, {nvlink_alpha, bw}}, p,
                          fmt::format("NVLink {}: the fewest links of a GPU x {:.0f} GB/s per link (sm {}: 25 GB/s per link and "
                                      "direction for NVLink 2-4, V100/A100/H100 datasheets; 50 for NVLink 5), alpha 3.4 us NCCL "
                                      "hwLat[NVLINK]",
                                      nvswitch ? "through an NVSwitch" : "peers", nvlink_bytes_per_s_per_link(gpus[0].sm) / 1e9, gpus[0].sm)});
  }
  double switch_uplink = 0, tree_uplink = 0;
  for (const TopoGpu& g : gpus) {
    switch_uplink = switch_uplink == 0 ? g.switch_uplink_bytes_per_s : std::min(switch_uplink, g.switch_uplink_bytes_per_s);
    tree_uplink = tree_uplink == 0 ? g.tree_uplink_bytes_per_s : std::min(tree_uplink, g.tree_uplink_bytes_per_s);
  }
  candidates.push_back({{"switch", 0, {pci_alpha, lane}, switch_uplink},
                        partition_by(gpus, [](const TopoGpu& g) { return g.switches.empty() ? g.busid : g.switches.back(); }),
                        "PCIe switch (NCCL path PIX): each GPU's lane link_speed x link_width x 128/130, uplink the switch's "
                        "own link, alpha 5.7 us NCCL hwLat[PCI]"});
  candidates.push_back({{"pcie-tree", 0, {pci_alpha, lane}, tree_uplink},
                        partition_by(gpus, [](const TopoGpu& g) { return g.switches.empty() ? g.busid : g.switches.front(); }),
                        "PCIe switches under one root port (NCCL path PXB): the GPU lane, uplink the outermost switch's link, alpha 5.7 us"});
  std::set<int> numas;
  for (const TopoGpu& g : gpus) numas.insert(g.numa);
  const bool cross_socket = numas.size() > 1;
  double socket_uplink = 0;  // one socket: nothing above it but the network, which its NICs reach
  for (const sim::Level& l : base.levels)
    if (l.name == "socket" && cross_socket) socket_uplink = l.uplink_bytes_per_s;
  candidates.push_back({{"socket", 0, {pci_alpha, lane}, socket_uplink},
                        partition_by(gpus, [](const TopoGpu& g) { return g.numa; }),
                        fmt::format("CPU socket / NUMA node (NCCL path PHB): peer-to-peer through the root complex at the GPU "
                                    "lane, alpha 5.7 us; uplink {:.0f} GB/s from {}'s socket level (0: none; the dump does not "
                                    "give the CPU interconnect)",
                                    socket_uplink / 1e9, base.name)});
  candidates.push_back({{"host", 0, {pci_alpha, lane}, 0, 1, cross_socket}, Partition(static_cast<size_t>(n), 0),
                        cross_socket ? "host across CPU sockets (NCCL path SYS): NCCL's default P2P level stops short of SYS, "
                                       "so messages are staged through host memory (host_bounce), GPU lane, alpha 5.7 us"
                                     : "host: GPU lane, alpha 5.7 us"});

  sim::Hardware hw = base;
  hw.name = name;
  hw.nodes = nodes;
  hw.ranks_per_node = n;
  hw.levels.clear();
  std::string source = fmt::format("Imported from the NCCL topology dump {} by `cptune topology import`: {} GPU(s) (sm {}), {} NIC(s), "
                                   "{} NUMA node(s) with GPUs; compute numbers from {}.",
                                   file, n, gpus[0].sm, host.nics, numas.size(), base.name);
  Partition current(static_cast<size_t>(n));
  std::iota(current.begin(), current.end(), 0);
  std::vector<Partition> kept;
  for (Candidate& c : candidates) {
    const int size = group_size(c.groups);
    const bool last = &c == &candidates.back();
    std::string skipped;
    if (size == 0) skipped = "its groups differ in size";
    else if (!coarser_or_equal(c.groups, current)) skipped = "its groups cut across the level below";
    else if (c.groups == current || size == 1) skipped = size == 1 ? "one GPU per group" : "the same groups as the level below";
    if (!skipped.empty() && !(last && hw.levels.empty())) {
      source += fmt::format("\nno '{}' level: {}.", c.level.name, skipped);
      continue;
    }
    if (c.level.link.bandwidth_bytes_per_s <= 0) continue;
    c.level.ranks = size;
    source += fmt::format("\nlevel '{}' ({} GPUs): {:.4g} GB/s{}{}; {}.", c.level.name, size, c.level.link.bandwidth_bytes_per_s / 1e9,
                          c.level.uplink_bytes_per_s > 0 ? fmt::format(", uplink {:.4g} GB/s", c.level.uplink_bytes_per_s / 1e9) : "",
                          c.level.host_bounce ? ", host_bounce" : "", c.why);
    hw.levels.push_back(c.level);
    kept.push_back(c.groups);
    current = c.groups;
  }
  sim::Level network{"network", 0, base.levels.empty() ? base.inter : base.levels.back().link};
  if (host.nic_bytes_per_s > 0) {
    network.link = {net_alpha, host.nic_bytes_per_s / n};
    source += fmt::format("\nlevel 'network': {} NIC(s), {:.4g} GB/s together (<net speed> Mb/s / 8), shared by {} GPU(s): {:.4g} GB/s "
                          "per GPU; alpha 9.6 us NCCL hwLat[NET].",
                          host.nics, host.nic_bytes_per_s / 1e9, n, network.link.bandwidth_bytes_per_s / 1e9);
  } else {
    source += fmt::format("\nlevel 'network': no <net> in the dump; {:.4g} GB/s per GPU and alpha {:.3g} us from {}.",
                          network.link.bandwidth_bytes_per_s / 1e9, network.link.alpha_s * 1e6, base.name);
  }
  hw.levels.push_back(network);
  // Rank order: instances contiguous, coarsest grouping first.
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    for (size_t k = kept.size(); k-- > 0;)
      if (kept[k][size_t(a)] != kept[k][size_t(b)]) return kept[k][size_t(a)] < kept[k][size_t(b)];
    return gpus[size_t(a)].dev < gpus[size_t(b)].dev;
  });
  std::string devs;
  for (int i : order) devs += fmt::format("{}{}", devs.empty() ? "" : " ", gpus[size_t(i)].dev);
  source += "\nrank order the levels assume (CUDA device per rank): " + devs + "; launch ranks in that order.";
  const bool nvlink = hw.levels.front().name.rfind("nv", 0) == 0;
  hw.injection_bytes_per_s = nvlink ? 0 : lane;
  source += nvlink ? "\ninjection: none (NVLink and PCIe are separate engines)."
                   : fmt::format("\ninjection: the GPU lane, {:.4g} GB/s, which all of a GPU's traffic shares.", lane / 1e9);
  hw.intra = hw.levels[hw.levels.size() - 2].link;
  hw.inter = hw.levels.back().link;
  for (const std::string& w : warns) source += "\nwarning: " + w + ".";
  if (warnings) warnings->insert(warnings->end(), warns.begin(), warns.end());
  hw.source = source + "\nFrom " + base.name + " (compute, memory and per-operation numbers; its link lines no longer apply):\n" + base.source;
  sim::validate(hw, "hardware imported from " + file);
  return hw;
}

}  // namespace cptune::tuner
