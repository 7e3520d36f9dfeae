// Times the Gloo Comm's alltoallv on P local ranks at the exact uneven byte counts of a UAA
// layout's Q,K,V exchange (the same counts scripts/bench_alltoallv_torch.py gives PyTorch).
// Prints one JSON line: median / min / max seconds of the slowest rank over the iterations.
//   build/bench/bench_alltoallv --world 4 --seq 4097 --heads 25 --kv-heads 5 --head-dim 64
#include <algorithm>
#include <chrono>
#include <iostream>

#include <nlohmann/json.hpp>

#include "backends/comm/comm.h"
#include "backends/comm/launcher.h"
#include "backends/exec/phase_timer.h"
#include "core/layout.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;
using namespace cptune;

int main(int argc, char** argv) {
  cli::ShapeArgs shape;
  cli::MeshArgs mesh;
  int iterations = 20, warmups = 3;
  po::options_description desc("bench_alltoallv");
  cli::add_shape_options(desc, shape);
  cli::add_mesh_options(desc, mesh);
  desc.add_options()("iterations", po::value(&iterations)->default_value(20))("warmups", po::value(&warmups)->default_value(3));
  try {
    if (!cli::parse_args({argv + 1, argv + argc}, desc, "usage: bench_alltoallv --world P --seq S --heads H ...")) return 0;
    const Layout layout = Layout::build({cli::to_shape(shape), cli::to_cluster(mesh), LayoutChoice{Strategy::uaa}});
    backends::RankLaunch launch;
    launch.world = static_cast<int>(layout.world());
    return backends::run_ranks(launch, [&](backends::Comm& world) {
      const int64_t me = world.rank(), eb = layout.elem_bytes();
      std::vector<int64_t> send(static_cast<size_t>(world.size())), recv(send.size());
      for (int64_t p = 0; p < world.size(); ++p)
        for (Tensor t : {Tensor::q, Tensor::k, Tensor::v}) {
          send[p] += layout.exchange_elems(t, me, p) * eb;
          recv[p] += layout.exchange_elems(t, p, me) * eb;
        }
      int64_t send_total = 0, recv_total = 0;
      for (size_t p = 0; p < send.size(); ++p) send_total += send[p], recv_total += recv[p];
      std::vector<std::byte> in(static_cast<size_t>(send_total), std::byte{1}), out(static_cast<size_t>(recv_total));
      std::vector<double> slowest;
      for (int i = 0; i < warmups + iterations; ++i) {
        world.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        world.alltoallv(in.data(), send, out.data(), recv);
        const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::vector<double> all(static_cast<size_t>(world.size()));
        world.allgather_host(&mine, sizeof(mine), all.data());
        if (i >= warmups) slowest.push_back(*std::max_element(all.begin(), all.end()));
      }
      if (me == 0) {
        const backends::Spread s = backends::spread_of(slowest);
        std::cout << nlohmann::json{{"impl", "cptune-gloo"}, {"median_s", s.median_s}, {"min_s", s.min_s},
                                    {"max_s", s.max_s}, {"send_bytes_rank0", send_total}}
                         .dump()
                  << std::endl;
      }
      return 0;
    }, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "bench_alltoallv: error: " << e.what() << "\n";
    return 2;
  }
}
