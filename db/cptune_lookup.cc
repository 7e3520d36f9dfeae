// The C ABI over db::Lookup: checks every pointer and struct_size, converts, and turns every
// exception into a status code and a thread-local message.
#include "db/cptune_lookup.h"

#include <cstdio>
#include <memory>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "core/error.h"
#include "cptune/version.h"
#include "db/local_fingerprint.h"
#include "db/lookup.h"
#include "db/open_lookup.h"
#include "db/store.h"
#include "sim/constraints.h"
#include "sim/hardware.h"

struct cptune_lookup {
  cptune::db::Lookup lookup;
};

struct cptune_lookup_mask {
  cptune::Mask mask;
};

namespace {

using cptune::db::Answer;
using cptune::ShapeView;

thread_local std::string last_error;

int fail(int status, const char* message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();  // out of memory for the message itself: the status still says what happened
  }
  return status;
}

// Runs body, mapping what it throws: Error (a user's mistake) to user_error, anything else
// to CPTUNE_LOOKUP_ERROR_INTERNAL.
template <typename Body>
int guarded(int user_error, Body body) noexcept {
  try {
    return body();
  } catch (const cptune::Error& e) {
    return fail(user_error, e.what());
  } catch (const std::bad_alloc&) {
    return fail(CPTUNE_LOOKUP_ERROR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(CPTUNE_LOOKUP_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(CPTUNE_LOOKUP_ERROR_INTERNAL, "unknown exception");
  }
}

const char* or_empty(const char* s) { return s ? s : ""; }

// Messages formatted into a stack buffer: argument checks allocate nothing that could throw.
int check_struct(const void* ptr, size_t struct_size, size_t expected, const char* name) noexcept {
  char message[192];
  if (!ptr) {
    std::snprintf(message, sizeof message, "%s pointer is NULL", name);
    return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, message);
  }
  if (struct_size < expected) {
    std::snprintf(message, sizeof message, "%s.struct_size is %zu, expected at least %zu; set it to sizeof(%s)", name,
                  struct_size, expected, name);
    return fail(CPTUNE_LOOKUP_ERROR_STRUCT_SIZE, message);
  }
  return CPTUNE_LOOKUP_OK;
}

cptune::db::Fingerprint to_fingerprint(const cptune_fingerprint& fp) {
  if (!fp.backend || !fp.device_model) throw cptune::Error("fingerprint backend and device_model must not be NULL");
  if (fp.nodes < 1) throw cptune::Error("fingerprint nodes must be at least 1");
  const cptune::Cluster cluster = cptune::db::checked_cluster(fp.world, fp.ranks_per_node);
  if (fp.nodes != cluster.nodes())
    throw cptune::Error("fingerprint nodes " + std::to_string(fp.nodes) + " do not match world " +
                        std::to_string(fp.world) + " over " + std::to_string(fp.ranks_per_node) +
                        " ranks per node (" + std::to_string(cluster.nodes()) + " nodes)");
  return cptune::db::Fingerprint{fp.backend, fp.device_model, cluster, or_empty(fp.library_versions),
                                 or_empty(fp.cptune_version)};
}

// No allocation for a valid shape: the exact-hit path stays allocation-free through the ABI.
// mask: the query's mask when the caller made one (shape.mask is not read then).
ShapeView to_view(const cptune_shape& s, const cptune::Mask* mask = nullptr) {
  if (s.num_seqs == 0 || !s.seq_lens) throw cptune::Error("shape needs seq_lens and num_seqs >= 1");
  if (s.num_seqs > size_t(cptune::kMaxSequences))  // before reading seq_lens[num_seqs - 1]
    throw cptune::Error("shape num_seqs " + std::to_string(s.num_seqs) + " exceeds " +
                        std::to_string(cptune::kMaxSequences));
  for (size_t i = 0; i < s.num_seqs; ++i)
    if (s.seq_lens[i] < 1) throw cptune::Error("shape seq_lens[" + std::to_string(i) + "] must be at least 1");
  if (s.batch < 1 || s.q_heads < 1 || s.kv_heads < 0 || s.head_dim < 1 || s.v_head_dim < 0)
    throw cptune::Error("shape batch, q_heads and head_dim must be at least 1, kv_heads and v_head_dim at least 0");
  ShapeView v;
  v.batch = s.batch;
  v.seq_lens = {s.seq_lens, s.num_seqs};
  v.q_heads = s.q_heads;
  v.kv_heads = s.kv_heads ? s.kv_heads : s.q_heads;
  v.head_dim = s.head_dim;
  v.v_head_dim = s.v_head_dim ? s.v_head_dim : s.head_dim;
  v.dtype = s.dtype ? cptune::parse_dtype(s.dtype) : cptune::DType::bf16;
  v.mask = mask ? *mask : s.mask ? cptune::parse_mask(s.mask) : cptune::Mask{};
  cptune::check_limits(v);  // sizes and GQA
  return v;
}

void copy_name(char (&dst)[CPTUNE_LOOKUP_NAME_SIZE], std::string_view name) {
  const size_t n = std::min(name.size(), sizeof(dst) - 1);
  std::memcpy(dst, name.data(), n);
  dst[n] = '\0';
}

void fill_choice(const Answer& a, cptune_choice& out) {
  copy_name(out.strategy, cptune::to_string(a.choice.strategy));
  out.ulysses = a.choice.ulysses;
  out.ring = a.choice.ring;
  copy_name(out.rank_order, cptune::to_string(a.choice.order));
  copy_name(out.head_policy, cptune::to_string(a.choice.head_policy));
  out.time_s = a.time_s;
  out.source = int32_t(a.source);
  out.measured_tokens = a.measured_tokens;
}

// Copies text into buffer (NUL-terminated) when it fits; *needed gets its size with the NUL.
int write_text(const std::string& text, char* buffer, size_t size, size_t* needed) {
  if (!needed) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "needed is NULL");
  *needed = text.size() + 1;
  if (!buffer && size > 0)
    return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "buffer is NULL with a size above 0; pass size 0 to ask the size");
  if (size < text.size() + 1) {
    if (buffer && size > 0) buffer[0] = '\0';
    return fail(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, "buffer too small: see *needed");
  }
  std::memcpy(buffer, text.c_str(), text.size() + 1);
  return CPTUNE_LOOKUP_OK;
}

cptune::LayoutChoice to_layout_choice(const cptune_choice& c) {
  cptune::LayoutChoice out;
  // The names are fixed-size arrays: one without a NUL would be read past its end.
  for (const char* name : {c.strategy, c.rank_order, c.head_policy})
    if (!std::memchr(name, '\0', CPTUNE_LOOKUP_NAME_SIZE))
      throw cptune::Error("cptune_choice names must be NUL-terminated within " +
                          std::to_string(CPTUNE_LOOKUP_NAME_SIZE) + " bytes");
  if (c.ulysses < 1 || c.ulysses > cptune::kMaxWorld || c.ring < 1 || c.ring > cptune::kMaxWorld)
    throw cptune::Error("cptune_choice ulysses " + std::to_string(c.ulysses) + " and ring " + std::to_string(c.ring) +
                        " must each be in 1.." + std::to_string(cptune::kMaxWorld));
  out.strategy = cptune::parse_strategy(c.strategy);
  out.ulysses = c.ulysses;
  out.ring = c.ring;
  out.order = cptune::parse_rank_order(c.rank_order);
  out.head_policy = cptune::parse_head_policy(c.head_policy);
  return out;
}

// cptune_lookup_query and _query_masked (mask NULL: the shape's own mask text).
int query(const cptune_lookup* lookup, const cptune_shape* shape, const cptune::Mask* mask, cptune_choice* out) {
  if (!lookup) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "lookup is NULL");
  if (int status = check_struct(shape, shape ? shape->struct_size : 0, sizeof(cptune_shape), "cptune_shape"))
    return status;
  if (int status = check_struct(out, out ? out->struct_size : 0, sizeof(cptune_choice), "cptune_choice"))
    return status;
  return guarded(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, [&] {
    const ShapeView view = to_view(*shape, mask);
    const std::optional<Answer> answer = lookup->lookup.query(view);
    if (!answer) {
      fail(CPTUNE_LOOKUP_NOT_FOUND, ("no layout for this shape: " + lookup->lookup.why_not(view)).c_str());
      return CPTUNE_LOOKUP_NOT_FOUND;
    }
    fill_choice(*answer, *out);
    return CPTUNE_LOOKUP_OK;
  });
}

static_assert(int(cptune::db::Source::exact) == CPTUNE_LOOKUP_SOURCE_EXACT);
static_assert(int(cptune::BlockKind::empty) == CPTUNE_LOOKUP_BLOCK_EMPTY);
static_assert(int(cptune::BlockKind::full) == CPTUNE_LOOKUP_BLOCK_FULL);
static_assert(int(cptune::BlockKind::causal) == CPTUNE_LOOKUP_BLOCK_CAUSAL);
static_assert(int(cptune::db::Source::nearest) == CPTUNE_LOOKUP_SOURCE_NEAREST);
static_assert(int(cptune::db::Source::simulated) == CPTUNE_LOOKUP_SOURCE_SIMULATED);

}  // namespace

extern "C" {

int cptune_lookup_version(void) { return CPTUNE_LOOKUP_ABI_VERSION; }

const char* cptune_lookup_library_version(void) { return CPTUNE_VERSION_STRING; }

int cptune_lookup_open(const char* db_path, const cptune_fingerprint* fp, cptune_lookup** out) {
  return cptune_lookup_open_with_simulator(db_path, fp, nullptr, out);
}

}  // extern "C"

namespace {

// The caller's `hardware`, or its default when NULL or "": with no database (db_path NULL or "",
// CPTUNE_LOOKUP_NO_DATABASE) the preset the fingerprint names ("auto"); with one, none (the
// measured answers alone). With a database, "auto" that names no preset leaves the measured
// answers (open_lookup says why on a miss); without one it is the caller's error. A hardware
// description that cannot be read, or a GPU question without one, is the caller's argument
// (INVALID_ARGUMENT), not the database's. Every path goes through db::open_lookup, as
// `cptune lookup` does.
void resolve_hardware(cptune::db::LookupRequest& request, const char* hardware) {
  request.hardware = hardware && *hardware                 ? std::string(hardware)
                     : request.db_path.empty()             ? std::string(cptune::db::kHardwareAuto)
                                                           : std::string();
  if (request.db_path.empty()) request.hardware = cptune::db::lookup_hardware(request);
  if (!request.hardware.empty() && request.hardware != cptune::db::kHardwareAuto)
    cptune::sim::load_hardware(request.hardware);
}

int open_request(cptune::db::LookupRequest& request, cptune_lookup** out) {
  return guarded(CPTUNE_LOOKUP_ERROR_DATABASE, [&] {
    *out = new cptune_lookup{cptune::db::open_lookup(request).lookup};
    return CPTUNE_LOOKUP_OK;
  });
}

}  // namespace

extern "C" {

int cptune_lookup_open_with_simulator(const char* db_path, const cptune_fingerprint* fp, const char* hardware,
                                      cptune_lookup** out) {
  if (!out) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "out is NULL");
  *out = nullptr;
  if (int status = check_struct(fp, fp ? fp->struct_size : 0, sizeof(cptune_fingerprint), "cptune_fingerprint"))
    return status;
  cptune::db::LookupRequest request;
  if (int status = guarded(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, [&] {
        request.db_path = or_empty(db_path);
        request.fingerprint = to_fingerprint(*fp);
        resolve_hardware(request, hardware);
        return CPTUNE_LOOKUP_OK;
      }))
    return status;
  return open_request(request, out);
}

int cptune_lookup_open_local(const char* db_path, const char* backend, int64_t world, int64_t ranks_per_node,
                             const char* hardware, const char* engine, cptune_lookup** out) {
  return cptune_lookup_open_local_pass(db_path, backend, world, ranks_per_node, hardware, engine, nullptr, out);
}

int cptune_lookup_open_local_pass(const char* db_path, const char* backend, int64_t world, int64_t ranks_per_node,
                                  const char* hardware, const char* engine, const char* pass, cptune_lookup** out) {
  if (!out) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "out is NULL");
  *out = nullptr;
  if (!backend) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "backend is NULL");
  cptune::db::LookupRequest request;
  if (int status = guarded(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, [&] {
        if (pass && *pass) request.pass = cptune::parse_pass(pass);
        request.db_path = or_empty(db_path);
        request.fingerprint = cptune::db::local_hardware_fingerprint(backend, world, ranks_per_node);
        if (engine && *engine) cptune::sim::apply_engine(request.constraints, engine);
        resolve_hardware(request, hardware);
        return CPTUNE_LOOKUP_OK;
      }))
    return status;
  return open_request(request, out);
}

int cptune_lookup_engines(char* buffer, size_t size, size_t* needed) {
  std::string text;
  if (int status = guarded(CPTUNE_LOOKUP_ERROR_INTERNAL, [&] {
        for (std::string_view name : cptune::sim::engine_names()) text += std::string(name) + "\n";
        return CPTUNE_LOOKUP_OK;
      }))
    return status;
  return write_text(text, buffer, size, needed);
}

int cptune_lookup_list_fingerprints(const char* db_path, char* buffer, size_t size, size_t* needed) {
  if (!db_path) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "db_path is NULL");
  std::string text;
  if (int status = guarded(CPTUNE_LOOKUP_ERROR_DATABASE, [&] {
        for (const auto& s : cptune::db::Store::open_read_only(db_path).fingerprints()) {
          cptune::db::Fingerprint fp = s.fingerprint;
          const std::string versions = cptune::db::describe_full(fp).substr(cptune::db::describe(fp).size());
          text += std::to_string(s.id) + " " + cptune::db::describe(fp) + " shapes=" + std::to_string(s.shapes) +
                  versions + "\n";
        }
        return CPTUNE_LOOKUP_OK;
      }))
    return status;
  return write_text(text, buffer, size, needed);
}

int cptune_lookup_engine_config(const char* engine, const cptune_shape* shape, const cptune_choice* choice,
                                const char* format, char* buffer, size_t size, size_t* needed) {
  if (!engine || !format) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "engine or format is NULL");
  if (int status = check_struct(shape, shape ? shape->struct_size : 0, sizeof(cptune_shape), "cptune_shape"))
    return status;
  if (int status = check_struct(choice, choice ? choice->struct_size : 0, sizeof(cptune_choice), "cptune_choice"))
    return status;
  std::string text;
  if (int status = guarded(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, [&] {
        text = cptune::sim::engine_config(engine, to_layout_choice(*choice), to_view(*shape),
                                          cptune::sim::parse_config_format(format));
        return CPTUNE_LOOKUP_OK;
      }))
    return status;
  return write_text(text, buffer, size, needed);
}

int cptune_lookup_query(const cptune_lookup* lookup, const cptune_shape* shape, cptune_choice* out) {
  return query(lookup, shape, nullptr, out);
}

int cptune_lookup_query_masked(const cptune_lookup* lookup, const cptune_shape* shape, const cptune_lookup_mask* mask,
                               cptune_choice* out) {
  if (!mask) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "mask is NULL");
  return query(lookup, shape, &mask->mask, out);
}

int cptune_lookup_mask_create(const char* text, cptune_lookup_mask** out) {
  if (!out) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "out is NULL");
  *out = nullptr;
  if (!text) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "text is NULL");
  return guarded(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, [&] {
    *out = new cptune_lookup_mask{cptune::parse_mask(text)};
    return CPTUNE_LOOKUP_OK;
  });
}

int cptune_lookup_mask_from_cells(int64_t blocks, const uint8_t* cells, cptune_lookup_mask** out) {
  if (!out) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "out is NULL");
  *out = nullptr;
  if (!cells) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "cells is NULL");
  return guarded(CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT, [&] {
    if (blocks < 1 || blocks > cptune::kMaxMaskBlocks)
      throw cptune::Error("blocks " + std::to_string(blocks) + " must be in [1, " +
                          std::to_string(cptune::kMaxMaskBlocks) + "]");
    std::vector<cptune::BlockKind> kinds(static_cast<size_t>(blocks * blocks));
    for (size_t i = 0; i < kinds.size(); ++i) {
      if (cells[i] > CPTUNE_LOOKUP_BLOCK_CAUSAL)
        throw cptune::Error("cells[" + std::to_string(i) + "] is " + std::to_string(cells[i]) +
                            "; a cell is CPTUNE_LOOKUP_BLOCK_EMPTY (0), _FULL (1) or _CAUSAL (2)");
      kinds[i] = static_cast<cptune::BlockKind>(cells[i]);
    }
    *out = new cptune_lookup_mask{cptune::block_mask(cptune::BlockTable(blocks, std::move(kinds)))};
    return CPTUNE_LOOKUP_OK;
  });
}

int cptune_lookup_mask_text(const cptune_lookup_mask* mask, char* buffer, size_t size, size_t* needed) {
  if (!mask) return fail(CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT, "mask is NULL");
  std::string text;
  if (int status = guarded(CPTUNE_LOOKUP_ERROR_INTERNAL, [&] {
        text = cptune::to_string(mask->mask);
        return CPTUNE_LOOKUP_OK;
      }))
    return status;
  return write_text(text, buffer, size, needed);
}

void cptune_lookup_mask_free(cptune_lookup_mask* mask) { delete mask; }


size_t cptune_lookup_shapes(const cptune_lookup* lookup) { return lookup ? lookup->lookup.shapes() : 0; }

void cptune_lookup_close(cptune_lookup* lookup) { delete lookup; }

const char* cptune_lookup_last_error(void) { return last_error.c_str(); }

const char* cptune_lookup_status_name(int status) {
  switch (status) {
    case CPTUNE_LOOKUP_OK:
      return "ok";
    case CPTUNE_LOOKUP_NOT_FOUND:
      return "not-found";
    case CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT:
      return "null-argument";
    case CPTUNE_LOOKUP_ERROR_STRUCT_SIZE:
      return "struct-size";
    case CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT:
      return "invalid-argument";
    case CPTUNE_LOOKUP_ERROR_DATABASE:
      return "database";
    case CPTUNE_LOOKUP_ERROR_INTERNAL:
      return "internal";
    default:
      return "unknown";
  }
}

const char* cptune_lookup_source_name(int source) {
  switch (source) {
    case CPTUNE_LOOKUP_SOURCE_EXACT:
      return "exact";
    case CPTUNE_LOOKUP_SOURCE_NEAREST:
      return "nearest";
    case CPTUNE_LOOKUP_SOURCE_SIMULATED:
      return "simulated";
    default:
      return "unknown";
  }
}

}  // extern "C"
