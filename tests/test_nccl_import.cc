// Calibration from nccl-tests logs and NCCL topology dumps: the fit recovers the latency and
// busbw a fixture was written with (tests/fixtures/make_nccl_tests_fixtures.py), and from sweeps
// generated here over many worlds and link speeds; the parsers refuse malformed input naming the
// line; the two fixture hosts import as the levels their XML describes; the CLI writes files
// that load and rank.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "sim/hardware.h"
#include "tests/command.h"
#include "tests/temp_dir.h"
#include "tuner/nccl_tests.h"
#include "tuner/nccl_topo.h"

namespace cptune::tuner {
namespace {

using testing::run_command;
using testing::TempDir;

std::string fixture(const std::string& name) { return std::string(CPTUNE_SOURCE_DIR) + "/tests/fixtures/" + name; }

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string cptune(const std::string& args) { return std::string(CPTUNE_BINARY) + " " + args; }

// An nccl-tests log written here: hosts x per_host ranks, time = intercept + size * f / busbw with
// a +-ripple, f = busbw/algbw of the kind.
std::string sweep(NcclTestKind kind, int hosts, int per_host, double intercept_us, double busbw_gbs, double ripple) {
  const int n = hosts * per_host;
  const double f = kind == NcclTestKind::sendrecv ? 1.0 : double(n - 1) / n;
  std::string text = fmt::format("# Collective test starting: {}_perf\n# nThread 1 nGpus 1 minBytes 8\n#\n", to_string(kind));
  for (int r = 0; r < n; ++r)
    text += fmt::format("#  Rank {:2d} Group  0 Pid {:6d} on host-{} device {:2d} [0x{:02x}] NVIDIA A100-SXM4-80GB\n", r, 100 + r,
                        r / per_host, r % per_host, 16 + r % per_host);
  text += "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong\n";
  int i = 0;
  for (int64_t size = 64 * n; size <= (int64_t(4) << 30); size *= 4, ++i) {
    const double t = (intercept_us + double(size) * f / (busbw_gbs * 1e3)) * (1 + ripple * std::sin(1.7 * i));
    const double algbw = double(size) / t / 1e3;
    text += fmt::format("{:12d} {:12d} float none -1 {:.2f} {:.2f} {:.2f} 0 {:.2f} {:.2f} {:.2f} 0\n", size, size / 4, t, algbw,
                        algbw * f, t, algbw, algbw * f);
  }
  return text;
}

// ---- nccl-tests -------------------------------------------------------------------------------

TEST(NcclTests, SingleNodeFixtureFitsTheLatencyAndBusbwItWasWrittenWith) {
  const NcclTestsRun run = parse_nccl_tests(read(fixture("nccl_tests_alltoall_1node.txt")), "1node.txt", std::nullopt);
  EXPECT_EQ(run.kind, NcclTestKind::alltoall);  // from "# Collective test starting"
  EXPECT_EQ(run.world, 8);
  EXPECT_EQ(run.hosts, 1);
  EXPECT_EQ(run.devices[3], "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(run.rows.size(), 24u);  // 1 KiB .. 8 GiB
  const LinkFit fit = fit_link(run);
  EXPECT_NEAR(fit.bandwidth_bytes_per_s, 360e9, 0.05 * 360e9);
  EXPECT_NEAR(fit.intercept_s, 28e-6, 0.10 * 28e-6);
  EXPECT_NEAR(fit.alpha_s, 4e-6, 0.10 * 4e-6);  // 7 peers
  // And the busbw the log itself prints at its largest sizes.
  EXPECT_NEAR(fit.bandwidth_bytes_per_s / 1e9, run.rows.back().busbw_gbs, 0.05 * run.rows.back().busbw_gbs);
}

TEST(NcclTests, TwoNodeMpiFixtureFitsAndTakesItsKindFromTheFileName) {
  const std::string path = fixture("nccl_tests_alltoall_perf_2node.txt");
  const NcclTestsRun run = parse_nccl_tests(read(path), path, std::nullopt);
  EXPECT_EQ(run.kind, NcclTestKind::alltoall);
  EXPECT_EQ(run.world, 16);
  EXPECT_EQ(run.hosts, 2);
  EXPECT_EQ(run.ranks_per_host(), 8);
  const LinkFit fit = fit_link(run);
  EXPECT_NEAR(fit.bandwidth_bytes_per_s, 42e9, 0.05 * 42e9);
  EXPECT_NEAR(fit.intercept_s, 75e-6, 0.10 * 75e-6);
  EXPECT_NEAR(fit.alpha_s, 5e-6, 0.10 * 5e-6);  // 15 peers
}

TEST(NcclTests, FitRecoversEveryKindWorldAndLinkSpeed) {
  for (NcclTestKind kind : {NcclTestKind::alltoall, NcclTestKind::sendrecv, NcclTestKind::all_gather})
    for (int hosts : {1, 2, 4})
      for (int per_host : {2, 4, 8})
        for (double busbw : {12.5, 45.0, 370.0})
          for (double intercept : {6.0, 40.0}) {
            SCOPED_TRACE(fmt::format("{} {}x{} {} GB/s {} us", to_string(kind), hosts, per_host, busbw, intercept));
            const NcclTestsRun run = parse_nccl_tests(sweep(kind, hosts, per_host, intercept, busbw, 0.03), "gen.txt", std::nullopt);
            ASSERT_EQ(run.kind, kind);
            ASSERT_EQ(run.world, hosts * per_host);
            const LinkFit fit = fit_link(run);
            EXPECT_NEAR(fit.bandwidth_bytes_per_s, busbw * 1e9, 0.05 * busbw * 1e9);
            EXPECT_NEAR(fit.intercept_s, intercept * 1e-6, 0.10 * intercept * 1e-6);
            EXPECT_LT(fit.median_abs_residual, 0.04);
          }
}

TEST(NcclTests, ExactSweepFitsExactly) {
  const LinkFit fit = fit_link(parse_nccl_tests(sweep(NcclTestKind::sendrecv, 1, 2, 7.0, 20.0, 0), "x", std::nullopt));
  EXPECT_NEAR(fit.intercept_s, 7e-6, 1e-8);
  EXPECT_NEAR(fit.bandwidth_bytes_per_s, 20e9, 20e9 * 1e-3);
  EXPECT_EQ(fit.alpha_s, fit.intercept_s);  // one message
}

TEST(NcclTests, KindPrefixOverridesTheHeader) {
  const NcclTestsRun run = parse_nccl_tests(sweep(NcclTestKind::alltoall, 1, 4, 10, 50, 0), "x", NcclTestKind::all_gather);
  EXPECT_EQ(run.kind, NcclTestKind::all_gather);
  EXPECT_EQ(parse_nccl_test_kind("allgather_perf"), NcclTestKind::all_gather);
  EXPECT_THROW(parse_nccl_test_kind("allreduce"), Error);
}

void expect_error(const std::string& text, const std::string& needle) {
  try {
    parse_nccl_tests(text, "bad.txt", NcclTestKind::alltoall);
    ADD_FAILURE() << "accepted; expected an error with '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(NcclTests, RefusesMalformedLogsNamingTheLine) {
  const std::string good = sweep(NcclTestKind::alltoall, 1, 2, 10, 50, 0);
  expect_error("hello\n", "no '#  Rank");
  std::string wrong = good;
  wrong.replace(wrong.rfind(" 0 "), 3, " 5 ");  // the last row's in-place #wrong is not read; out-of-place is
  const size_t last_row = good.rfind('\n', good.size() - 2) + 1;
  std::string bad_wrong = good.substr(0, last_row) + "1024 256 float none -1 10.0 0.1 0.1 3 10.0 0.1 0.1 0\n";
  expect_error(bad_wrong, "#wrong is '3'");
  expect_error(good + "2048 512 float none -1 abc 0.1 0.1 0\n", "line");
  expect_error(good + "2048 512 float none\n", "columns");
  std::string no_header = good;
  no_header.erase(no_header.find("#       size"), no_header.find('\n', no_header.find("#       size")) - no_header.find("#       size"));
  expect_error(no_header, "before the column header");
  EXPECT_THROW(parse_nccl_tests(sweep(NcclTestKind::alltoall, 1, 2, 10, 50, 0).substr(0, good.find("#       size")), "x", std::nullopt),
               Error);  // no rows
  std::string unknown = good;
  unknown.erase(0, unknown.find('\n') + 1);  // no "Collective test starting" and a name that says nothing
  EXPECT_THROW(parse_nccl_tests(unknown, "log.txt", std::nullopt), Error);
}

TEST(NcclTests, ApplyReplacesTheCrossedLevelsOnly) {
  const sim::Hardware base = sim::load_hardware("h100-sxm");
  std::vector<NcclTestsRun> runs = {
      parse_nccl_tests(read(fixture("nccl_tests_alltoall_1node.txt")), "one.txt", std::nullopt),
      parse_nccl_tests(read(fixture("nccl_tests_alltoall_perf_2node.txt")), "two.txt", NcclTestKind::alltoall)};
  EXPECT_EQ(crossed_level(base, runs[0]), 0u);  // node
  EXPECT_EQ(crossed_level(base, runs[1]), 1u);  // scalable unit: 2 nodes fit in one
  const sim::Hardware hw = apply_nccl_tests(base, runs);
  // Each run's collective goes into its own entry of the level it crossed; the links stay.
  const auto alltoall = [](const sim::Level& l) { return l.rate_of(sim::Collective::alltoall); };
  ASSERT_TRUE(alltoall(hw.levels[0]) && alltoall(hw.levels[1]));
  EXPECT_NEAR(alltoall(hw.levels[0])->bandwidth_bytes_per_s, 360e9, 18e9);
  EXPECT_NEAR(alltoall(hw.levels[1])->bandwidth_bytes_per_s, 42e9, 2.1e9);
  EXPECT_EQ(hw.levels[0].link, base.levels[0].link);
  EXPECT_EQ(hw.levels[2], base.levels[2]);
  EXPECT_EQ(hw.intra, base.intra);
  EXPECT_EQ(hw.attention_flops_per_s.bf16, base.attention_flops_per_s.bf16);
  EXPECT_NE(hw.source.find("one.txt: alltoall on 8 rank(s) x 1 host(s)"), std::string::npos) << hw.source;
  EXPECT_NE(hw.source.find("-> level 'scalable-unit'"), std::string::npos) << hw.source;
  // A measured rate is stored as measured, host bounce or not (it already holds the bounce).
  const sim::Hardware l20 = sim::load_hardware("l20");
  const NcclTestsRun eight = parse_nccl_tests(sweep(NcclTestKind::alltoall, 1, 8, 30, 10, 0), "x", std::nullopt);
  EXPECT_EQ(crossed_level(l20, eight), 2u);  // host
  EXPECT_NEAR(apply_nccl_tests(l20, std::span(&eight, 1)).levels[2].rate_of(sim::Collective::alltoall)->bandwidth_bytes_per_s,
              10e9, 1e8);
  const NcclTestsRun two = parse_nccl_tests(sweep(NcclTestKind::sendrecv, 1, 2, 6, 22, 0), "x", std::nullopt);
  EXPECT_EQ(crossed_level(l20, two), 0u);  // switch
}

// ---- NCCL topology ------------------------------------------------------------------------------

std::string levels_text(const sim::Hardware& hw) {
  std::string s;
  for (const sim::Level& l : hw.levels)
    s += fmt::format("{}:{}:{:.4g}{}{} ", l.name, l.ranks, l.link.bandwidth_bytes_per_s / 1e9,
                     l.uplink_bytes_per_s > 0 ? fmt::format(":up{:.4g}", l.uplink_bytes_per_s / 1e9) : "", l.host_bounce ? ":bounce" : "");
  return s;
}

TEST(NcclTopology, FourGpuNvlinkPairsOnTwoSockets) {
  const std::string path = fixture("nccl_topo_4gpu_nvlink_pairs.xml");
  const TopoHost host = read_nccl_topology(read(path), path);
  ASSERT_EQ(host.gpus.size(), 4u);
  EXPECT_EQ(host.gpus[2].numa, 1);
  EXPECT_EQ(host.nics, 2);
  const sim::Hardware hw = hardware_from_topology(host, sim::load_hardware("a100-pcie"), path, "a", 1);
  const double lane = 16e9 * 16 * 128 / 130 / 8;  // 31.5 GB/s
  // NVLink pairs (12 links x 25 GB/s), then the host across sockets, staged through host memory.
  EXPECT_EQ(levels_text(hw), fmt::format("nvlink:2:300 host:4:{:.4g}:bounce network:0:6.25 ", lane / 1e9));
  EXPECT_EQ(hw.ranks_per_node, 4);
  EXPECT_EQ(hw.injection_bytes_per_s, 0);  // NVLink is not behind the PCIe lane
  EXPECT_EQ(hw.attention_flops_per_s.bf16, sim::load_hardware("a100-pcie").attention_flops_per_s.bf16);
  EXPECT_NE(hw.source.find("rank order the levels assume (CUDA device per rank): 0 1 2 3"), std::string::npos) << hw.source;
}

TEST(NcclTopology, DualSocketEightGpusTwoPerSwitch) {
  const std::string path = fixture("nccl_topo_8gpu_dual_socket_pcie.xml");
  const sim::Hardware hw = hardware_from_topology(read_nccl_topology(read(path), path), sim::load_hardware("l20"), path, "b", 1);
  const double lane = 16e9 * 16 * 128 / 130 / 8;
  EXPECT_EQ(levels_text(hw), fmt::format("switch:2:{0:.4g}:up{0:.4g} socket:4:{0:.4g}:up40 host:8:{0:.4g}:bounce network:0:6.25 ", lane / 1e9));
  EXPECT_DOUBLE_EQ(hw.injection_bytes_per_s, lane);
  EXPECT_EQ(sim::levels_of(hw, 8).size(), 4u);
}

TEST(NcclTopology, GroupsThatDoNotNestAreLeftOutAndSaid) {
  // NVLink pairs (0,2) and (1,3) across two switches (0,1) and (2,3): the switch level cuts across.
  std::string xml = "<system version=\"1\"><cpu numaid=\"0\">";
  for (int sw = 0; sw < 2; ++sw) {
    xml += fmt::format("<pci busid=\"0000:{}0:00.0\" class=\"0x060400\" link_speed=\"32.0 GT/s PCIe\" link_width=\"16\">", sw + 1);
    for (int k = 0; k < 2; ++k) {
      const int g = 2 * sw + k, peer = (g + 2) % 4;
      xml += fmt::format("<pci busid=\"0000:{0}{1}:00.0\" class=\"0x030200\" link_speed=\"32.0 GT/s PCIe\" link_width=\"16\">"
                         "<gpu dev=\"{2}\" sm=\"90\" rank=\"{2}\"><nvlink target=\"0000:{3}{4}:00.0\" count=\"4\" tclass=\"0x030200\"/>"
                         "</gpu></pci>",
                         sw + 1, k + 1, g, peer / 2 + 1, peer % 2 + 1);
    }
    xml += "</pci>";
  }
  xml += "</cpu></system>";
  const sim::Hardware hw = hardware_from_topology(read_nccl_topology(xml, "x.xml"), sim::load_hardware("h100-sxm"), "x.xml", "x", 1);
  // One socket: its level is the node (the host level would hold the same four).
  EXPECT_EQ(levels_text(hw), "nvlink:2:100 socket:4:63.02 network:0:50 ");
  EXPECT_NE(hw.source.find("no 'switch' level: its groups cut across the level below."), std::string::npos) << hw.source;
  EXPECT_NE(hw.source.find("0 2 1 3"), std::string::npos) << hw.source;  // pairs contiguous
}

TEST(NcclTopology, NestedBridgesGroupByTheSwitchAboveThePerGpuPorts) {
  // A PCIe switch's upstream port (a bridge) holds one downstream port (a bridge) per GPU.
  std::string xml = "<system version=\"1\"><cpu numaid=\"0\">";
  for (int sw = 0; sw < 2; ++sw) {
    xml += fmt::format("<pci busid=\"0000:{}0:00.0\" class=\"0x060400\" link_speed=\"16.0 GT/s PCIe\" link_width=\"8\">", sw + 1);
    for (int k = 0; k < 2; ++k)
      xml += fmt::format("<pci busid=\"0000:{0}{1}:00.0\" class=\"0x060400\" link_speed=\"16.0 GT/s PCIe\" link_width=\"16\">"
                         "<pci busid=\"0000:{0}{1}:01.0\" class=\"0x030200\" link_speed=\"16.0 GT/s PCIe\" link_width=\"16\">"
                         "<gpu dev=\"{2}\" sm=\"89\" rank=\"{2}\"/></pci></pci>",
                         sw + 1, k + 1, 2 * sw + k);
    xml += "</pci>";
  }
  xml += "</cpu></system>";
  const sim::Hardware hw = hardware_from_topology(read_nccl_topology(xml, "n.xml"), sim::load_hardware("l20"), "n.xml", "n", 1);
  EXPECT_EQ(levels_text(hw), "pcie-tree:2:31.51:up15.75 socket:4:31.51 network:0:12.5 ");
  EXPECT_NE(hw.source.find("no 'switch' level: one GPU per group."), std::string::npos) << hw.source;
  EXPECT_NE(hw.source.find("no <net> in the dump"), std::string::npos) << hw.source;
}

void expect_xml_error(const std::string& xml, const std::string& needle) {
  try {
    read_nccl_topology(xml, "t.xml");
    ADD_FAILURE() << "accepted; expected an error with '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(NcclTopology, RefusesMalformedXmlNamingTheLine) {
  expect_xml_error("<system>\n<cpu numaid=\"0\">\n</pci>\n</system>",
                   "t.xml line 2: a closing tag does not match the element it closes (<cpu>, opened on this line)");
  expect_xml_error("<system>\n<cpu numaid=0>\n</cpu></system>", "line 2: an attribute is malformed");
  expect_xml_error("<system>\n<cpu numaid=\"0\">\n", "t.xml line 2: not well-formed XML");
  expect_xml_error("<system/>\n<extra/>", "line 2: <extra> after the root element");
  expect_xml_error("<system>\ntext\n</system>", "line 2: text 'text");
  expect_xml_error("<topo/>", "is the root");
  expect_xml_error("<system version=\"1\"><cpu numaid=\"0\"></cpu></system>", "no <gpu>");
  expect_xml_error("<system><cpu numaid=\"0\">\n<pci busid=\"0000:01:00.0\" class=\"0x030200\" link_speed=\"16 GT/s\" link_width=\"x\">"
                   "<gpu dev=\"0\" sm=\"80\"/></pci></cpu></system>",
                   "line 2: <pci> attribute link_width=\"x\"");
  expect_xml_error("<system><cpu numaid=\"0\"><pci busid=\"a\" class=\"0x030200\">\n<gpu dev=\"0\"/></pci></cpu></system>",
                   "line 2: <gpu> has no sm");
  // Comments and the XML declaration are skipped.
  EXPECT_NO_THROW(parse_xml("<?xml version=\"1.0\"?>\n<!-- c -->\n<system a='1'><!-- x --></system>\n<!-- end -->\n", "t.xml"));
}

// A GPU under one CPU: `pci` the attributes of its PCI node, `links` what its <gpu> holds,
// `extra` more XML inside the <cpu>.
std::string one_gpu_host(const std::string& pci, const std::string& links, const std::string& extra = "") {
  return "<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x030200\" " + pci +
         "><gpu dev=\"0\" sm=\"80\">" + links + "</gpu></pci>" + extra + "</cpu></system>";
}

TEST(NcclTopology, ADoctypeIsSkippedAndEntitiesAreDecoded) {
  const std::string path = fixture("nccl_topo_4gpu_nvlink_pairs.xml");
  const std::string plain = read(path);
  // The old reader stopped at <!DOCTYPE>, and left &#x30; undecoded: the GPUs' class then read
  // "&#x30;x030200", they were no GPUs, and the NVLink level vanished without a word.
  std::string encoded = plain;
  for (size_t at = 0; (at = encoded.find("class=\"0x0302", at)) != std::string::npos; at += 8) encoded.replace(at + 7, 1, "&#x30;");
  ASSERT_NE(encoded, plain);
  const sim::Hardware base = sim::load_hardware("a100-pcie");
  const std::string want = levels_text(hardware_from_topology(read_nccl_topology(plain, path), base, path, "a", 1));
  for (const std::string& text : {"<!DOCTYPE system>\n" + plain, encoded})
    EXPECT_EQ(levels_text(hardware_from_topology(read_nccl_topology(text, path), base, path, "a", 1)), want);
  // tinyxml2 reads no internal DTD subset (no entity of one is ever expanded): an error, not a guess.
  expect_xml_error("<!DOCTYPE system [ <!ENTITY x \"y\"> ]>\n" + plain, "internal subset");
}

TEST(NcclTopology, NestingThirtyThousandDeepIsAnErrorNotAStackOverflow) {
  std::string xml = "<system version=\"1\">";
  for (int i = 0; i < 30000; ++i) xml += "<a>";  // 210 KB: crashed `topology import` (stack overflow)
  for (int i = 0; i < 30000; ++i) xml += "</a>";
  xml += "</system>";
  expect_xml_error(xml, "nest too deep");
  std::string sixty_five = "<system>";
  for (int i = 0; i < 64; ++i) sixty_five += "<a>";
  for (int i = 0; i < 64; ++i) sixty_five += "</a>";
  expect_xml_error(sixty_five + "</system>", "nested 65 deep");
}

TEST(NcclTopology, NegativeNvlinkCountsAndNicSpeedsAreRefused) {
  const std::string link = "<nvlink target=\"0000:02:00.0\" count=\"-12\" tclass=\"0x030200\"/>";
  expect_xml_error("<system version=\"1\"><cpu numaid=\"0\"><pci busid=\"0000:01:00.0\" class=\"0x030200\" link_speed=\"16 GT/s\" "
                   "link_width=\"16\"><gpu dev=\"0\" sm=\"80\">" + link + "</gpu></pci></cpu></system>",
                   "<nvlink> count=\"-12\"");
  expect_xml_error(one_gpu_host("link_speed=\"16 GT/s\" link_width=\"16\"", "", "<nic><net name=\"ib0\" speed=\"-100000\"/></nic>"),
                   "<net> speed=\"-100000\" is negative");
  expect_xml_error(one_gpu_host("link_speed=\"16 GT/s\" link_width=\"-16\"", ""), "is no PCIe link");
  expect_xml_error(one_gpu_host("link_speed=\"-16 GT/s\" link_width=\"16\"", ""), "is no PCIe link");
}

// Issue 23 item 5: dumps taken inside VMs give no PCIe speed or width for GPUs passed through
// without a visible switch; the import takes the base preset's lane and says so.
TEST(NcclTopology, AVmDumpWithEmptyPcieSpeedsTakesTheBasePresetsLaneWithAWarning) {
  const std::string path = fixture("nccl_topo_azure_ncv4_vm.xml");
  const TopoHost host = read_nccl_topology(read(path), path);
  ASSERT_EQ(host.gpus.size(), 4u);
  for (const TopoGpu& g : host.gpus) EXPECT_TRUE(g.pcie_unknown) << g.busid;
  const sim::Hardware base = sim::load_hardware("a100-pcie");
  std::vector<std::string> warnings;
  const sim::Hardware hw = hardware_from_topology(host, base, path, "ncv4", 1, &warnings);
  // NVLink bridge pairs (12 links x 25 GB/s), then the four NUMA nodes' host level at the base's
  // lane, staged through host memory; one 100 Gb/s NIC shared by four GPUs.
  EXPECT_EQ(levels_text(hw), fmt::format("nvlink:2:300 host:4:{:.4g}:bounce network:0:3.125 ", base.injection_bytes_per_s / 1e9));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("no PCIe link_speed / link_width for GPU(s) 0001:00:00.0, 0002:00:00.0, 0003:00:00.0, 0004:00:00.0"),
            std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("a100-pcie's PCIe number, 25 GB/s"), std::string::npos) << warnings[0];
  EXPECT_NE(hw.source.find("\nwarning: the dump gives no PCIe"), std::string::npos) << hw.source;
  // A base with no PCIe numbers cannot stand in: an error saying which preset to give.
  try {
    hardware_from_topology(host, sim::load_hardware("h100-sxm"), path, "ncv4", 1);
    ADD_FAILURE() << "accepted a base with no PCIe numbers";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("give a PCIe preset as --base"), std::string::npos) << e.what();
  }
  // Width 0 with a speed, or a speed with no width, is the same quirk.
  const TopoHost zero = read_nccl_topology(one_gpu_host("link_speed=\"16 GT/s\" link_width=\"0\"", ""), "z.xml");
  EXPECT_TRUE(zero.gpus[0].pcie_unknown);
}

TEST(NcclTopology, PublishedFileQuirksAreIgnoredWithANote) {
  // Azure's current NC A100 v4 file points each GPU's NVLink at the GPU itself
  // (Azure/azhpc-images topology/ncv4-topo.xml at 4be0efb7b671effb5d11e42d8c50f4a3dba8b6be).
  const TopoHost self = read_nccl_topology(
      one_gpu_host("link_speed=\"16 GT/s\" link_width=\"16\"", "<nvlink target=\"0000:01:00.0\" count=\"12\" tclass=\"0x030200\"/>"),
      "s.xml");
  EXPECT_TRUE(self.gpus[0].nvlinks.empty());
  ASSERT_EQ(self.notes.size(), 1u);
  EXPECT_NE(self.notes[0].find("targets the GPU itself"), std::string::npos) << self.notes[0];
  // A static NCCL_TOPO_FILE (Azure's ndv2/ndv4 files) lists GPUs as bare <pci> nodes; a NIC
  // port of speed 0 is down.
  const TopoHost bare = read_nccl_topology(
      one_gpu_host("link_speed=\"16 GT/s\" link_width=\"16\"", "",
                   "<pci busid=\"0002:00:00.0\" class=\"0x030200\" link_speed=\"16 GT/s\" link_width=\"16\"/>"
                   "<nic><net name=\"eth1\" speed=\"0\"/></nic>"),
      "b.xml");
  EXPECT_EQ(bare.gpus.size(), 1u);
  EXPECT_EQ(bare.nics, 0);
  ASSERT_EQ(bare.notes.size(), 2u);
  EXPECT_NE(bare.notes[0].find("a GPU with no <gpu> inside"), std::string::npos) << bare.notes[0];
  EXPECT_NE(bare.notes[1].find("speed 0"), std::string::npos) << bare.notes[1];
}

// ---- CLI ---------------------------------------------------------------------------------------

TEST(NcclImportCli, CalibrateAndImportWriteFilesThatSimulate) {
  TempDir dir;
  auto r = run_command(cptune(fmt::format("calibrate --nccl-tests {} alltoall={} --base h100-sxm --out {}",
                                          fixture("nccl_tests_alltoall_1node.txt"), fixture("nccl_tests_alltoall_perf_2node.txt"),
                                          dir.file("hw.json"))));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("scalable-unit"), std::string::npos) << r.output;
  EXPECT_NEAR(sim::load_hardware(dir.file("hw.json")).levels[0].rate_of(sim::Collective::alltoall)->bandwidth_bytes_per_s, 360e9,
              18e9);
  r = run_command(cptune(fmt::format("topology import {} --base a100-pcie --out {}", fixture("nccl_topo_4gpu_nvlink_pairs.xml"),
                                     dir.file("a.json"))));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("nvlink"), std::string::npos) << r.output;
  r = run_command(cptune(fmt::format("simulate --hardware {} --seq 32k --heads 32 --head-dim 128 --mask causal --json", dir.file("a.json"))));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Host (a): Ulysses U = 2 inside the NVLink pairs with a ring across them beats Ulysses over all
  // four, whose all-to-all sends half its bytes across the sockets through host memory.
  const nlohmann::json ranking = nlohmann::json::parse(r.output)["candidates"];
  auto position = [&](const std::string& strategy, int u, int ring) {
    for (size_t i = 0; i < ranking.size(); ++i)
      if (ranking[i]["strategy"] == strategy && ranking[i]["ulysses"] == u && ranking[i]["ring"] == ring &&
          ranking[i]["order"] == "ulysses-inner")
        return i;
    return ranking.size();
  };
  EXPECT_EQ(position("hybrid", 2, 2), 0u) << ranking.dump(1);
  EXPECT_LT(position("hybrid", 2, 2), position("ulysses", 4, 1));
  // Bad input exits 2 naming the problem.
  r = run_command(cptune(fmt::format("calibrate --nccl-tests {} --base h100-sxm --out {}", dir.file("missing.txt"), dir.file("x.json"))));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("missing.txt"), std::string::npos) << r.output;
  r = run_command(cptune(fmt::format("topology import {} --base a100-pcie --out {}", fixture("nccl_topo_azure_ncv4_vm.xml"),
                                     dir.file("vm.json"))));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: the dump gives no PCIe link_speed"), std::string::npos) << r.output;
  EXPECT_NE(sim::load_hardware(dir.file("vm.json")).source.find("warning: the dump gives no PCIe"), std::string::npos);
  std::ofstream(dir.file("bad.xml")) << "<system>\n<cpu>\n</system>\n";
  r = run_command(cptune(fmt::format("topology import {} --base a100-pcie --out {}", dir.file("bad.xml"), dir.file("y.json"))));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("line 2"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace cptune::tuner
