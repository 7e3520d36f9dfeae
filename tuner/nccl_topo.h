#pragma once
// Hardware levels from an NCCL topology dump: the XML NCCL writes with NCCL_TOPO_DUMP_FILE
// (src/graph/xml.cc writes it, src/graph/topo.cc reads it):
//   <system version="1">
//     <cpu numaid="0" affinity="..." arch="x86_64" vendor="GenuineIntel" ...>
//       <pci busid="0000:17:00.0" class="0x060400" link_speed="16.0 GT/s PCIe" link_width="16">
//         <pci busid="0000:19:00.0" class="0x030200" link_speed="16.0 GT/s PCIe" link_width="16">
//           <gpu dev="0" sm="80" rank="0" gdr="1">
//             <nvlink target="0000:1a:00.0" count="12" tclass="0x030200"/>
//           </gpu>
//         </pci>
//       </pci>
//       <nic><net name="mlx5_0" dev="0" speed="200000" port="1" .../></nic>
//     </cpu>
//   </system>
// Parsed with tinyxml2 (Debian's libtinyxml2-dev: entities decoded, <!DOCTYPE> and comments
// skipped, nothing external loaded, line numbers in errors, nesting bounded), then the GPUs
// grouped into nested levels: NVLink peers, PCIe switch, CPU socket, host, network.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sim/hardware.h"

namespace cptune::tuner {

struct XmlElement {
  std::string name;
  std::vector<std::pair<std::string, std::string>> attributes;
  std::vector<XmlElement> children;
  int line = 0;
  // The attribute's value, or "" when absent.
  const std::string& attr(std::string_view key) const;
};

// The document's root element. Throws Error "FILE line N: ..." on malformed input (an unclosed or
// mismatched tag, an unquoted value, text or a second element after the root, nesting deeper
// than 64).
XmlElement parse_xml(std::string_view text, const std::string& file);

// One GPU of the dump and how it hangs off the machine.
struct TopoGpu {
  int dev = 0, sm = 0, rank = -1;
  std::string busid;
  int numa = 0;                            // the <cpu numaid> it sits under
  std::vector<std::string> switches;       // PCIe bridges (class 0x0604) from the CPU down to it
  double pcie_bytes_per_s = 0;             // its own link: GT/s x width x 128/130 / 8
  bool pcie_unknown = false;               // no speed or width on it nor a switch above (a VM)
  double switch_uplink_bytes_per_s = 0;    // its innermost switch's link to the level above; 0: none
  double tree_uplink_bytes_per_s = 0;      // its outermost switch's link (to the CPU); 0: none
  std::vector<std::pair<std::string, int>> nvlinks;  // target bus id (or "nvswitch") and link count
};

struct TopoHost {
  std::vector<TopoGpu> gpus;         // in dump order
  double nic_bytes_per_s = 0;        // all NICs together (<net speed> in Mb/s)
  int nics = 0;
  std::string cpu_vendor;
  std::vector<std::string> notes;    // quirks of the dump that were left out or ignored, for warnings
};

// Reads the dump. Throws Error naming the file and line of an element it cannot use (a GPU
// without sm, a link_speed it cannot read, a negative NVLink count or NIC speed) or when no GPU
// is found.
TopoHost read_nccl_topology(std::string_view text, const std::string& file);

// NVLink bandwidth per link and direction of a GPU generation: sm 70 (V100, NVLink 2), 80 (A100,
// NVLink 3) and 90 (H100, NVLink 4) all move 25 GB/s per link; sm 100 (B200, NVLink 5) 50 GB/s.
double nvlink_bytes_per_s_per_link(int sm);

// The host as levels (innermost first, then the network) merged with `base`'s compute numbers;
// source lines say what each level came from and which groupings were left out (not nested, or
// uneven). The GPUs' rank order is the order those levels' instances are contiguous in.
// A GPU whose PCIe speed and width the dump does not give (VMs) gets base's GPU lane (its
// injection bandwidth, else its first PCIe level's link); each such fallback and each of the
// host's notes is a "warning:" source line and, when `warnings` is given, appended there.
// Throws Error when a lane is unknown and base has no PCIe numbers.
sim::Hardware hardware_from_topology(const TopoHost& host, const sim::Hardware& base, const std::string& file,
                                     const std::string& name, int64_t nodes, std::vector<std::string>* warnings = nullptr);

}  // namespace cptune::tuner
