#!/usr/bin/env bash
# Standing mutation check: each named one-line mutation below is applied to a copy of the tree,
# the test programs that should notice it are rebuilt and run, and at least one of them must
# fail. Prints each mutant killed / survived, the mutation score, and exits 1 if any survives
# (2 when the script itself cannot run, e.g. a pattern no longer matches the code).
#
#   scripts/mutants.sh [NAME...]      # all mutants, or only those named
#
# The copy lives in build/mutants/tree (override with CPTUNE_MUTANTS_DIR) with its own build
# dir, kept between runs: the first run builds it (minutes), later runs rebuild only what a
# mutation touches (ccache makes the restore after each mutant a cache hit). Patterns are exact
# code text, replaced exactly once; a pattern that matches zero or several times stops the run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${CPTUNE_MUTANTS_DIR:-$ROOT/build/mutants}
TREE=$WORK/tree
BUILD=$TREE/build
TEST_TIMEOUT=${CPTUNE_MUTANT_TIMEOUT:-180}
export CCACHE_BASEDIR=$TREE CCACHE_NOHASHDIR=1

# name | file | code as it is | code mutated | test program:gtest filter, ... (run in order until one fails)
MUTANTS=(
  "window_plus_one|backends/kernels/attention.cc|return {i - std::min(mask.window, kFarPosition) + 1, i + 1};|return {i - std::min(mask.window, kFarPosition), i + 1};|test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "window_minus_one|backends/kernels/attention.cc|return {i - std::min(mask.window, kFarPosition) + 1, i + 1};|return {i - std::min(mask.window, kFarPosition) + 2, i + 1};|test_attention_cpu:*,test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "causal_diagonal_excluded|backends/kernels/attention.cc|return {-kFarPosition, i + 1};|return {-kFarPosition, i};|test_attention_cpu:*,test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "lse_merge_without_max|backends/kernels/isa/attention_cpu_isa.cc|const float merged = std::max(lse, lse_b) + std::log1p(|const float merged = lse_b + std::log1p(|test_attention_cpu:*,test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "kv_head_map_off_by_one_group|backends/kernels/attention.cc|return {rank.q_heads.begin, rank.kv_heads.begin, shape.group_size()};|return {rank.q_heads.begin, rank.kv_heads.begin - 1, shape.group_size()};|test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "uneven_piece_last_token_dropped|backends/exec/ulysses_exchange.cc|for (const Placement& p : member_places_[u]) c_.copy(seg, p.src, 0, shard, p.dst, 0, p.n, h);|for (const Placement& p : member_places_[u]) c_.copy(seg, p.src, 0, shard, p.dst, 0, p.n - p.n % 2, h);|test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "o_placement_offset_lost|backends/exec/rank_context.cc|out.push_back({src, chunk_offset + piece.begin - chunk.begin, piece.padded});|out.push_back({src, chunk_offset, piece.padded});|test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "ring_grads_home_to_wrong_owner|backends/exec/ring_rotation.cc|    grads = grads_in;|    if (!last) grads = grads_in;|test_executor_backward:ExecutorBackward.EachMotionVerifies"
  "reduce_scatter_drops_one_rank|backends/exec/kv_allgather.cc|for (int64_t r = 1; r < R; ++r) c_.device.add_floats(|for (int64_t r = 2; r < R; ++r) c_.device.add_floats(|test_executor_backward:ExecutorBackward.EachMotionVerifies"
  "shared_kv_head_grads_overwritten|backends/exec/ulysses_exchange.cc|if (parts[i].sums && shares_kv_heads_) {|if (parts[i].sums && false) {|test_executor_backward:ExecutorBackward.EachMotionVerifies"
  "partial_block_grads_dropped|backends/exec/ring_rotation.cc|        add_held_grads(st, grads);|        (void)grads;|test_executor_backward:ExecutorBackward.EachMotionVerifies"
  "ring_step_order_reversed|core/layout.cc|return ((r - step) % ring() + ring()) % ring();|return ((r + step) % ring() + ring()) % ring();|test_layout:*,test_executor:Executor.EveryStrategyAndPolicyVerifiesOnOddShapes"
  "sequence_split_rule_changed|core/layout.cc|classic ? plen / chunks : split_size(len, chunks, c));|classic ? plen / chunks : split_size(len, chunks, chunks - 1 - c));|test_layout:*"
  "block_causal_cell_counted_full|core/block_mask.cc|total += row[k] == BlockKind::full ? (qhi - qlo) * (khi - klo) : causal_pairs(qlo, qhi, klo, khi);|total += (qhi - qlo) * (khi - klo);|test_block_mask:*"
  "attention_time_halved|sim/attention_rate.cc|return double(c.flops) / flops_per_s;|return double(c.flops) / (2 * flops_per_s);|test_sim:CostModelFloor.*"
  "engine_head_pad_boundary|sim/engines/rules.cc|if (pad < local) return \"\";|if (pad <= local) return \"\";|test_engines:EngineRules.*"
  "engine_forward_only_ignored|sim/constraints.cc|if (backward && forward_only)|if (false && forward_only)|test_engines:EngineRules.*"
  "nan_ratio_passes|backends/exec/reference.cc|const double ratio = !finite ? std::numeric_limits<double>::infinity() : err == 0 ? 0 : err / tol;|const double ratio = err == 0 ? 0 : err / tol;|test_crafted_files:NonFiniteVerify.*"
  "sigpipe_not_ignored|backends/comm/gloo_comm.cc|  ignore_sigpipe();|  (void)0;|test_gloo_comm:GlooCommFailure.ARankWritingToAClosedPeerGetsEpipeInsteadOfDyingOfSigpipe"
  "store_token_not_checked|backends/comm/tcp_store_server.cc|c.authenticated = same_token(key, options.token);|c.authenticated = true;|test_launch:TcpStoreAdversary.*"
  "lookup_tie_break_flipped|db/lookup.cc|log_tokens - std::prev(above)->first < above->first - log_tokens|log_tokens - std::prev(above)->first <= above->first - log_tokens|test_lookup:LookupNearest.*"
  "bwd_dk_first_query_tile_dropped|backends/kernels/isa/attention_backward_isa.cc|MatrixMap(dk, keys, head_dim_).noalias() += ds.transpose() * q;|if (first_pos_ > 0) MatrixMap(dk, keys, head_dim_).noalias() += ds.transpose() * q;|test_attention_bwd:AttendBackward.MatchesTheReferenceForEveryMaskAcrossTileEdges"
  "bwd_lse_off_by_a_hundredth|backends/kernels/isa/attention_backward_isa.cc|lse_[r] = lse[r * stride];|lse_[r] = lse[r * stride] + 0.01f;|test_attention_bwd:AttendBackward.EveryIsaMatchesTheReferenceOnRandomShapesAndSplits"
  "bwd_delta_dropped|backends/kernels/isa/attention_backward_isa.cc|p.row(r).array() * (ds.row(r).array() - delta_[r]);|p.row(r).array() * ds.row(r).array();|test_attention_bwd:AttendBackward.MatchesTheReferenceForEveryMaskAcrossTileEdges"
  "bwd_dq_scale_dropped|backends/kernels/isa/attention_backward_isa.cc|scale * Eigen::Map<const Eigen::ArrayXf>(dq_.data() + r * head_dim_, head_dim_);|Eigen::Map<const Eigen::ArrayXf>(dq_.data() + r * head_dim_, head_dim_);|test_attention_bwd:AttendBackward.MatchesTheReferenceForEveryMaskAcrossTileEdges"
  "bwd_reference_without_delta|backends/exec/reference_bwd.cc|const double gap = dp_[x] - delta;|const double gap = dp_[x];|test_attention_bwd:BackwardReference.IsTheGradientOfTheForwardReference"
)

want=("$@")
selected() {
  [[ ${#want[@]} -eq 0 ]] && return 0
  local w
  for w in "${want[@]}"; do [[ $w == "$1" ]] && return 0; done
  return 1
}

# Exact, single replacement; stops the run when the code no longer reads as expected.
replace() {  # file from to
  python3 - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
n = text.count(old)
if n != 1:
    sys.exit(f"mutants.sh: pattern found {n} times in {path} (need exactly 1): {old}")
open(path, "w").write(text.replace(old, new))
EOF
}

start=$(date +%s)
mkdir -p "$TREE"
# The checkout's files into the tree (not build*/ or .git), compared by content and copied with
# a new mtime: a file left mutated by a killed run is rewritten, so make rebuilds it.
python3 - "$ROOT" "$TREE" <<'PY'
import filecmp, os, shutil, sys
root, tree = sys.argv[1:3]
def walk(top):
    for dirpath, dirs, files in os.walk(top):
        if os.path.samefile(dirpath, top):
            dirs[:] = [d for d in dirs if d != ".git" and not d.startswith("build")]
        for f in files:
            yield os.path.relpath(os.path.join(dirpath, f), top)
wanted = set()
for rel in walk(root):
    src, dst = os.path.join(root, rel), os.path.join(tree, rel)
    if os.path.islink(src) or not os.path.isfile(src):
        continue
    wanted.add(rel)
    if not os.path.exists(dst) or not filecmp.cmp(src, dst, shallow=False):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
for rel in set(walk(tree)) - wanted:
    os.remove(os.path.join(tree, rel))
PY
if [[ ! -f $BUILD/CMakeCache.txt ]]; then
  # The flags of scripts/build.sh: with ccache relative to each tree, what the main build compiled
  # is a cache hit here, and only mutated objects (and those naming the tree's path) compile.
  cmake -S "$TREE" -B "$BUILD" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache >/dev/null
fi

# Every pattern must match the pristine code before anything is built.
for m in "${MUTANTS[@]}"; do
  IFS='|' read -r name file from to tests <<<"$m"
  selected "$name" || continue
  n=$(grep -cF -- "$from" "$TREE/$file" || true)
  [[ $n == 1 ]] || { echo "mutants.sh: $name: pattern found $n times in $file: $from" >&2; exit 2; }
done

targets_of() { tr ',' '\n' <<<"$1" | cut -d: -f1 | sort -u | tr '\n' ' '; }
run_tests() {  # tests log -> 0 when all pass
  local t bin filter
  for t in $(tr ',' ' ' <<<"$1"); do
    bin=${t%%:*} filter=${t#*:}
    if ! timeout "$TEST_TIMEOUT" "$BUILD/tests/$bin" --gtest_filter="$filter" --gtest_brief=1 >>"$2" 2>&1; then
      echo "$bin"
      return 1
    fi
  done
  return 0
}

# Unmutated, every test program used must build and pass, or a kill would mean nothing.
all_targets=$(for m in "${MUTANTS[@]}"; do IFS='|' read -r name _ _ _ tests <<<"$m"; if selected "$name"; then targets_of "$tests"; fi; done | tr ' ' '\n' | sort -u | tr '\n' ' ')
log=$WORK/baseline.log
: >"$log"
cmake --build "$BUILD" -j2 --target $all_targets >>"$log" 2>&1 || { echo "mutants.sh: the unmutated tree does not build; see $log" >&2; exit 2; }
for m in "${MUTANTS[@]}"; do
  IFS='|' read -r name _ _ _ tests <<<"$m"
  selected "$name" || continue
  if ! failed=$(run_tests "$tests" "$log"); then
    echo "mutants.sh: $failed fails without any mutation (for $name); see $log" >&2
    exit 2
  fi
done
echo "baseline: $all_targets pass unmutated ($(( $(date +%s) - start )) s)"

tried=0 killed=0 survived=()
for m in "${MUTANTS[@]}"; do
  IFS='|' read -r name file from to tests <<<"$m"
  selected "$name" || continue
  tried=$((tried + 1))
  t0=$(date +%s)
  log=$WORK/$name.log
  : >"$log"
  replace "$TREE/$file" "$from" "$to"
  verdict=""
  if ! cmake --build "$BUILD" -j2 --target $(targets_of "$tests") >>"$log" 2>&1; then
    verdict="killed (does not compile)"
  elif failed=$(run_tests "$tests" "$log"); then
    verdict="SURVIVED"
  else
    verdict="killed by $failed"
  fi
  cp "$ROOT/$file" "$TREE/$file"
  touch "$TREE/$file"
  if [[ $verdict == SURVIVED ]]; then survived+=("$name"); else killed=$((killed + 1)); fi
  printf '%-34s %-40s %4d s  %s:%s\n' "$name" "$verdict" $(( $(date +%s) - t0 )) "$file" "${from:0:40}"
done

echo "mutation score: $killed / $tried killed, ${#survived[@]} survived${survived:+ (${survived[*]})}; $(( $(date +%s) - start )) s"
[[ ${#survived[@]} -eq 0 ]]
