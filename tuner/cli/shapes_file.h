#pragma once
// The tuner's shapes file: CSV, one shape per line after a header row naming the columns.
//   seq,heads,kv_heads,head_dim,v_head_dim,dtype,mask,batch
//   4097,25,5,64,64,bf16,causal,1
//   77+4097,24,8,64,,bf16,full,1        <- a packed batch ("77;4097" or "77,4097" quoted too)
//   4096,16,,,,bf16,"strided:16,4",1   <- a mask with commas is quoted, or written strided:16;4
//   4096,16,,,,bf16,blocks:table.txt,1 <- a table file, relative to the working directory
// Only seq and heads are required; a missing or empty cell takes the CLI's default. A mask cell
// takes every form of --mask (core parse_mask).
#include <string>
#include <vector>

#include "core/types.h"

namespace cptune::cli {

// Throws Error naming the file, the line number and the bad cell.
std::vector<AttentionShape> read_shapes_file(const std::string& path);

}  // namespace cptune::cli
