#include "core/layout_json.h"

#include "core/error.h"

namespace cptune {
namespace {

nlohmann::json link_json(const LinkBytes& b) {
  return {{"send_intra", b.send_intra}, {"send_inter", b.send_inter},
          {"recv_intra", b.recv_intra}, {"recv_inter", b.recv_inter}};
}

nlohmann::json runs_json(std::span<const TokenRun> runs) {
  nlohmann::json out = nlohmann::json::array();
  for (const TokenRun& run : runs)
    out.push_back({{"seq", run.seq}, {"begin", run.begin}, {"count", run.count}, {"padded", run.padded}});
  return out;
}

}  // namespace

nlohmann::json to_json(const AttentionShape& shape) {
  return {{"batch", shape.batch},         {"seq_lens", shape.seq_lens},         {"q_heads", shape.q_heads},
          {"kv_heads", shape.kv_heads},   {"head_dim", shape.head_dim},         {"v_head_dim", shape.v_head_dim},
          {"dtype", to_string(shape.dtype)}, {"mask", to_string(shape.mask)}};
}

nlohmann::json to_json(const Layout& layout) {
  nlohmann::json ranks = nlohmann::json::array();
  const int64_t R = layout.ring();
  const bool rotates = layout.plan(Pass::forward).ring_attention();
  for (const RankLayout& rl : layout.ranks()) {
    nlohmann::json rank = {
        {"rank", rl.rank},
        {"u", rl.u},
        {"r", rl.r},
        {"node", rl.node},
        {"seq_tokens", rl.input_tokens},
        {"padded_tokens", rl.input_padded_tokens},
        {"input_runs", runs_json(rl.input_runs)},
        {"q_heads", rl.q_heads.count()},
        {"q_head_range", {rl.q_heads.begin, rl.q_heads.end}},
        {"kv_heads", rl.kv_heads.count()},
        {"kv_head_range", {rl.kv_heads.begin, rl.kv_heads.end}},
        {"attn_tokens", layout.shard_tokens(rl.r)},
        {"send_bytes", rl.send_bytes()},
        {"recv_bytes", rl.recv_bytes()},
        {"phases",
         {{"qkv", link_json(rl.qkv_bytes)},
          {"o", link_json(rl.o_bytes)},
          {"ring", link_json(rl.ring_bytes)},
          {"allgather", link_json(rl.allgather_bytes)},
          {"gather", link_json(rl.gather_bytes)}}},
        {"flops", rl.flops},
        {"useful_flops", rl.useful_flops},
        {"peak_bytes", rl.peak_bytes},
    };
    if (layout.ulysses() > 1) {
      nlohmann::json counts;
      for (auto [t, name] : {std::pair{Tensor::q, "q"}, {Tensor::k, "k"}, {Tensor::v, "v"}, {Tensor::o, "o"}}) {
        counts[name] = {{"send", layout.send_counts(t, rl.rank)}, {"recv", layout.recv_counts(t, rl.rank)}};
      }
      rank["ulysses_counts_elems"] = counts;
    }
    if (rotates) {
      std::vector<int64_t> sources;
      for (int64_t k = 0; k < R; ++k) sources.push_back(layout.global_rank(rl.u, layout.ring_kv_source(rl.r, k)));
      rank["ring"] = {{"next", layout.ring_next(rl.rank)}, {"prev", layout.ring_prev(rl.rank)}, {"kv_sources", sources}};
    }
    ranks.push_back(std::move(rank));
  }
  nlohmann::json shards = nlohmann::json::array();
  for (int64_t r = 0; r < R; ++r) shards.push_back(runs_json(layout.shard_runs(r)));
  nlohmann::json doc = to_json(layout.choice());
  doc.update(to_json(layout.cluster()));
  doc.update({{"zigzag", layout.zigzag()},
              {"placement", {{"name", std::string(layout.placement())}, {"imbalance", layout.placement_imbalance()}}},
              {"shape", to_json(layout.shape())},
              {"padding", {{"tokens", layout.padding_tokens()}, {"heads", layout.padding_heads()}}},
              {"ring_shards", shards},
              {"ranks", ranks}});
  return doc;
}

nlohmann::json to_json(const LayoutChoice& c) {
  return {{"strategy", to_string(c.strategy)},
          {"ulysses", c.ulysses},
          {"ring", c.ring},
          {"order", to_string(c.order)},
          {"head_policy", to_string(c.head_policy)}};
}

nlohmann::json to_json(const Cluster& c) {
  return {{"world", c.world}, {"ranks_per_node", c.ranks_per_node}, {"nodes", c.nodes()}};
}

nlohmann::json to_json(const std::map<Phase, double>& seconds) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [phase, s] : seconds) out[std::string(to_string(phase))] = s;
  return out;
}

LayoutChoice layout_choice_from_json(const nlohmann::json& j) {
  try {
    return LayoutChoice{parse_strategy(j.at("strategy").get<std::string>()), j.at("ulysses").get<int64_t>(),
                        j.at("ring").get<int64_t>(), parse_rank_order(j.at("order").get<std::string>()),
                        parse_head_policy(j.at("head_policy").get<std::string>())};
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("bad layout choice in JSON: ") + e.what() +
                "; expected strategy, ulysses, ring, order and head_policy");
  }
}

}  // namespace cptune
