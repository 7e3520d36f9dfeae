// Block-sparse masks in core: the tables, the named patterns, their text forms and their exact
// pair counts, against brute force over positions.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/block_mask.h"
#include "core/error.h"
#include "core/layout.h"
#include "core/types.h"
#include "tests/layout_sweep.h"
#include "temp_dir.h"

namespace cptune {
namespace {

BlockTable random_table(std::mt19937_64& rng, int64_t n) {
  std::vector<BlockKind> cells(static_cast<size_t>(n * n));
  for (auto& c : cells) c = static_cast<BlockKind>(rng() % 3);
  return BlockTable(n, std::move(cells));
}


TEST(BlockMask, BlocksAreTensorSplitCutsAndPaddingIsTheLastBlock) {
  for (int64_t n = 1; n <= 17; ++n)
    for (int64_t len = 1; len <= 40; ++len) {
      ASSERT_EQ(block_begin(len, n, 0), 0);
      ASSERT_EQ(block_begin(len, n, n), len);
      for (int64_t b = 0; b < n; ++b) {
        const int64_t size = block_begin(len, n, b + 1) - block_begin(len, n, b);
        ASSERT_EQ(size, len / n + (b < len % n ? 1 : 0));
        for (int64_t p = block_begin(len, n, b); p < block_begin(len, n, b + 1); ++p)
          ASSERT_EQ(block_of(len, n, p), b) << "len " << len << " n " << n << " pos " << p;
      }
      ASSERT_EQ(block_of(len, n, len), n - 1);
      ASSERT_EQ(block_of(len, n, len + 5), n - 1);
    }
}

// Random tables up to 16 blocks, sequences shorter and longer than the table, every range
// (reaching into padding): the closed form per cell equals brute force.
TEST(BlockMask, PairsEqualBruteForceOnRandomTables) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 16);
    const Mask m = block_mask(random_table(rng, n));
    const int64_t len = 1 + static_cast<int64_t>(rng() % 50);
    for (int r = 0; r < 40; ++r) {
      const int64_t qa = static_cast<int64_t>(rng() % (len + 4)), qb = qa + static_cast<int64_t>(rng() % (len + 4));
      const int64_t ka = static_cast<int64_t>(rng() % (len + 4)), kb = ka + static_cast<int64_t>(rng() % (len + 4));
      ASSERT_EQ(mask_pairs(m, len, qa, qb, ka, kb), testing::brute_pairs(m, len, qa, qb, ka, kb))
          << to_string(m) << " len " << len << " q[" << qa << "," << qb << ") k[" << ka << "," << kb << ")";
    }
  }
}

// CAUSAL is "key position <= query position": a table of all-CAUSAL cells is the causal mask, a
// table of all-FULL cells the full one, whatever the lengths.
TEST(BlockMask, UniformTablesAreTheClassicMasks) {
  for (int64_t n : {1, 3, 8})
    for (int64_t len : {1, 7, 64, 100}) {
      const Mask causal = block_mask(BlockTable(n, std::vector<BlockKind>(size_t(n * n), BlockKind::causal)));
      const Mask full = block_mask(BlockTable(n, std::vector<BlockKind>(size_t(n * n), BlockKind::full)));
      EXPECT_EQ(mask_pairs(causal, len, 0, len, 0, len), mask_pairs(Mask{MaskKind::causal, 0}, len, 0, len, 0, len));
      EXPECT_EQ(mask_pairs(full, len, 0, len, 0, len), len * len);
    }
}

// Closed forms with L = N s: pairs = FULL cells * s^2 + CAUSAL diagonal cells * s (s + 1) / 2.
TEST(BlockMask, PatternsHaveTheirDocumentedCells) {
  for (int64_t n : {1, 2, 5, 16, 64}) {
    const BlockTable star = block_pattern("star:" + std::to_string(n));
    EXPECT_EQ(star.count(BlockKind::causal), n);
    EXPECT_EQ(star.count(BlockKind::full), n - 1);
    for (int64_t s = 1; s <= n; s += 3) {
      const BlockTable strided = block_pattern("strided:" + std::to_string(n) + "," + std::to_string(s));
      int64_t full = 0;  // below the diagonal: distance d < s or d % s == 0, n - d cells at distance d
      for (int64_t d = 1; d < n; ++d) full += (d < s || d % s == 0) ? n - d : 0;
      EXPECT_EQ(strided.count(BlockKind::full), full) << strided.name();
      EXPECT_EQ(strided.count(BlockKind::causal), n);
    }
    for (int64_t sink = 0; sink <= std::min<int64_t>(n, 2); ++sink)
      for (int64_t local = 1; local <= n; local += 2) {
        const BlockTable stream = block_pattern("stream:" + std::to_string(n) + "," + std::to_string(sink) + "," +
                                                std::to_string(local));
        for (int64_t q = 0; q < n; ++q)
          for (int64_t k = 0; k < n; ++k) {
            const BlockKind want = k == q ? BlockKind::causal
                                   : (k < q && (k < sink || q - k < local)) ? BlockKind::full
                                                                           : BlockKind::empty;
            ASSERT_EQ(stream.at(q, k), want) << stream.name() << " " << q << "," << k;
          }
      }
    const BlockTable gl = block_pattern("global-local:" + std::to_string(n) + ",1,1");
    EXPECT_EQ(gl.count(BlockKind::causal), 0);
    // one global row and column (2n - 1 cells) plus the band |q-k| <= 1 outside them
    EXPECT_EQ(gl.count(BlockKind::full), n == 1 ? 1 : (2 * n - 1) + (n - 1) + 2 * (n - 2));
  }
  const int64_t s = 1000, n = 16;
  const Mask star = parse_mask("star:16");
  EXPECT_EQ(mask_pairs(star, n * s, 0, n * s, 0, n * s), (n - 1) * s * s + n * s * (s + 1) / 2);
}

TEST(BlockMask, TextFormsReadBackToEqualMasks) {
  std::mt19937_64 rng(11);
  for (const char* text : {"star:16", "strided:16,4", "global-local:16,1,2", "stream:16,1,3", "star:1"}) {
    const Mask m = parse_mask(text);
    EXPECT_EQ(m.kind, MaskKind::blocks);
    EXPECT_EQ(to_string(m), text);
    EXPECT_EQ(parse_mask(to_string(m)), m);
    EXPECT_EQ(parse_mask(inline_text(*m.blocks)), m) << "a pattern and its inline table are the same mask";
  }
  for (int trial = 0; trial < 20; ++trial) {
    const Mask m = block_mask(random_table(rng, 1 + static_cast<int64_t>(rng() % 16)));
    const Mask back = parse_mask(to_string(m));
    EXPECT_EQ(back, m);
    EXPECT_EQ(back.blocks->hash(), m.blocks->hash());
  }
  EXPECT_NE(parse_mask("star:8"), parse_mask("star:9"));
  EXPECT_NE(parse_mask("stream:8,1,2"), parse_mask("stream:8,1,3"));
  EXPECT_NE(parse_mask("star:8").blocks->hash(), parse_mask("star:9").blocks->hash());
  EXPECT_NE(parse_mask("star:4"), Mask(MaskKind::causal, 0));
}

TEST(BlockMask, FamilyHashFollowsTheTable) {
  AttentionShape a{1, {4096}, 8, 8, 64, 64, DType::bf16, parse_mask("star:16")};
  AttentionShape b = a;
  b.mask = parse_mask(inline_text(*a.mask.blocks));
  EXPECT_EQ(family_hash(view_of(a)), family_hash(view_of(b)));
  EXPECT_TRUE(same_family(view_of(a), view_of(b)));
  b.mask = parse_mask("strided:16,4");
  EXPECT_FALSE(same_family(view_of(a), view_of(b)));
  EXPECT_NE(family_hash(view_of(a)), family_hash(view_of(b)));
}

TEST(BlockMask, TableFilesInTextAndJson) {
  testing::TempDir dir;
  const std::string text = dir.file("t.txt"), json = dir.file("t.json");
  std::ofstream(text) << "# a shared prompt\n3\nC . .\nF C .   # row 1\nF . C\n";
  std::ofstream(json) << R"({"blocks": 3, "rows": ["C..", "FC.", "F.C"]})";
  const Mask from_text = parse_mask("blocks:" + text), from_json = parse_mask("blocks:" + json);
  EXPECT_EQ(from_text, parse_mask("star:3"));
  EXPECT_EQ(from_json, parse_mask("star:3"));
  EXPECT_EQ(to_string(from_text), "blocks:3:C../FC./F.C");
}

void expect_error(const std::string& text, const std::string& fragment) {
  try {
    parse_mask(text);
    ADD_FAILURE() << "'" << text << "' was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(BlockMask, BadTextNamesTheBadValue) {
  expect_error("star:0", "block count 0");
  expect_error("star:257", "block count 257");
  expect_error("star", "write star:N");
  expect_error("strided:16", "write strided:N,S");
  expect_error("strided:16,0", "S = 0");
  expect_error("strided:16,x", "'x'");
  expect_error("stream:16,1,0", "LOCAL = 0");
  expect_error("stream:16,17,1", "SINK = 17");
  expect_error("global-local:4,5,1", "G = 5");
  expect_error("blocks", "needs a table");
  expect_error("blocks:2:CF/FX", "'X'");
  expect_error("blocks:2:CF/F", "1 cells, not 2");
  expect_error("blocks:3:CF./F.C", "2 rows for 3 blocks");
  expect_error("blocks:/no/such/file", "/no/such/file");
  expect_error("diagonal", "unknown mask 'diagonal'");
  testing::TempDir dir;
  const std::string bad = dir.file("bad.json");
  std::ofstream(bad) << R"({"blocks": 2, "rows": ["C."]})";
  expect_error("blocks:" + bad, "1 rows for 2 blocks");
}

}  // namespace
}  // namespace cptune
