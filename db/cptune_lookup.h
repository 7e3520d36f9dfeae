/* cptune_lookup.h: the C ABI of the cptune lookup library (libcptune_lookup.so).
 *
 * An engine asks which context-parallel layout is fastest for an attention shape on its
 * cluster. The library opens a database written by `cptune tune` read-only, keeps the rows of
 * the caller's fingerprint in memory and closes the file; a query is then a hash lookup.
 *
 * Conventions: every struct starts with struct_size, which the caller sets to sizeof(struct);
 * every function returns a status code (0 success, 1 no answer, negative an error) and never
 * lets an exception or a crash through; after a negative status, cptune_lookup_last_error()
 * says what was wrong. A handle may be queried from several threads at once.
 *
 *   cptune_fingerprint fp = {sizeof fp, "gloo", "cpu", 4, 4, 1, NULL, NULL};
 *   (or: cptune_lookup_open_local("tune.db", "gloo", 4, 4, NULL, NULL, &lookup), which builds
 *   this machine's fingerprint: device_model "cpu" for Gloo CPU ranks, the GPU's model for NCCL)
 *   cptune_lookup* lookup = NULL;
 *   if (cptune_lookup_open("tune.db", &fp, &lookup) != CPTUNE_LOOKUP_OK) { ...last_error()... }
 *   int64_t seq = 4096;
 *   cptune_shape shape = {sizeof shape, 1, &seq, 1, 32, 8, 128, 128, "bf16", "causal"};
 *   cptune_choice choice = {sizeof choice};
 *   int status = cptune_lookup_query(lookup, &shape, &choice);
 *   cptune_lookup_close(lookup);
 *
 * Block-sparse masks (README "Block-sparse masks"): cptune_shape.mask takes every text of the
 * CLI's --mask ("star:16", "strided:16,4", "blocks:4:C.../FC../F.C./F..C", "blocks:FILE"), parsed
 * on every query. An engine that asks often makes the mask once and passes it to
 * cptune_lookup_query_masked, whose exact hit then allocates nothing:
 *   cptune_lookup_mask* mask = NULL;
 *   cptune_lookup_mask_create("stream:16,1,3", &mask);       (or _from_cells with its own table)
 *   int status = cptune_lookup_query_masked(lookup, &shape, mask, &choice);
 *   cptune_lookup_mask_free(mask);
 */
#ifndef CPTUNE_LOOKUP_H
#define CPTUNE_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define CPTUNE_LOOKUP_API __attribute__((visibility("default")))
#else
#define CPTUNE_LOOKUP_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a struct or function changes incompatibly; the soname carries it too. */
#define CPTUNE_LOOKUP_ABI_VERSION 1
/* Bumped when functions are added compatibly: 1 added cptune_lookup_engines and opening without
 * a database (CPTUNE_LOOKUP_NO_DATABASE); 2 added cptune_lookup_open_local_pass. */
#define CPTUNE_LOOKUP_ABI_MINOR 2

/* db_path of every open function: no database, every answer is the simulator's (source
 * CPTUNE_LOOKUP_SOURCE_SIMULATED). NULL means the same. */
#define CPTUNE_LOOKUP_NO_DATABASE ""
/* hardware of the open functions: the preset the fingerprint's device names ("cpu" -> cpu-gloo,
 * "NVIDIA H100 80GB HBM3" -> h100-sxm). A GPU question (backend "nccl", or an engine) whose
 * device is "cpu" or names no preset is CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT: it is never priced
 * on the CPU preset unasked. The default without a database. */
#define CPTUNE_LOOKUP_HARDWARE_AUTO "auto"

/* Status codes. */
#define CPTUNE_LOOKUP_OK 0
#define CPTUNE_LOOKUP_NOT_FOUND 1                /* no measurement and no simulator answer */
#define CPTUNE_LOOKUP_ERROR_NULL_ARGUMENT (-1)    /* a required pointer was NULL */
#define CPTUNE_LOOKUP_ERROR_STRUCT_SIZE (-2)      /* struct_size smaller than this ABI's struct */
#define CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT (-3) /* a bad value: unknown dtype, empty seq_lens, ... */
#define CPTUNE_LOOKUP_ERROR_DATABASE (-4)         /* missing, unreadable, corrupt or newer database */
#define CPTUNE_LOOKUP_ERROR_INTERNAL (-5)         /* out of memory or a bug; the message says which */

/* Where an answer came from (cptune_choice.source). */
#define CPTUNE_LOOKUP_SOURCE_EXACT 0     /* this shape was measured */
#define CPTUNE_LOOKUP_SOURCE_NEAREST 1   /* the closest measured sequence length of the same family */
#define CPTUNE_LOOKUP_SOURCE_SIMULATED 2 /* no data for the family: the simulator's pick */

#define CPTUNE_LOOKUP_NAME_SIZE 32

typedef struct cptune_lookup cptune_lookup;
/* A mask made once (cptune_lookup_mask_create or _from_cells), read-only; any thread may use it. */
typedef struct cptune_lookup_mask cptune_lookup_mask;

/* The cluster the caller runs on. Rows measured on another fingerprint are never returned.
 * library_versions and cptune_version: NULL or "" matches any, the fingerprint recorded last
 * among those with equal hardware fields winning. */
typedef struct cptune_fingerprint {
  size_t struct_size;
  const char* backend;      /* "gloo", "nccl" */
  const char* device_model; /* "cpu", "NVIDIA H100 80GB HBM3" */
  int64_t world;            /* ranks in the context-parallel group */
  int64_t ranks_per_node;
  int64_t nodes;
  const char* library_versions;
  const char* cptune_version;
} cptune_fingerprint;

/* One attention call. kv_heads 0 means q_heads; v_head_dim 0 means head_dim; dtype NULL means
 * "bf16"; mask NULL means "full". */
typedef struct cptune_shape {
  size_t struct_size;
  int64_t batch;
  const int64_t* seq_lens; /* tokens of each packed sequence */
  size_t num_seqs;
  int64_t q_heads;
  int64_t kv_heads;
  int64_t head_dim;
  int64_t v_head_dim;
  const char* dtype; /* "bf16", "fp16", "fp32" */
  const char* mask;  /* "full", "causal", "sliding:4096", "star:16", "blocks:N:ROWS", ... (--mask) */
} cptune_shape;

/* The layout to run. Names as the cptune CLI spells them, NUL-terminated. */
typedef struct cptune_choice {
  size_t struct_size;
  char strategy[CPTUNE_LOOKUP_NAME_SIZE];    /* "ulysses", "uaa", "ring", "ring-zigzag", "allgather-kv",
                                                "hybrid", "hybrid-uaa" */
  int64_t ulysses;                           /* U */
  int64_t ring;                              /* R */
  char rank_order[CPTUNE_LOOKUP_NAME_SIZE];  /* "ulysses-inner", "ring-inner" */
  char head_policy[CPTUNE_LOOKUP_NAME_SIZE]; /* "balanced", "kv-aligned" */
  double time_s;            /* measured median (exact; nearest: of the shape measured) or predicted */
  int32_t source;           /* CPTUNE_LOOKUP_SOURCE_* */
  int64_t measured_tokens;  /* total tokens of the shape measured; 0 when simulated */
} cptune_choice;

/* CPTUNE_LOOKUP_ABI_VERSION of the library actually loaded. */
CPTUNE_LOOKUP_API int cptune_lookup_version(void);
/* The cptune release the library was built from, e.g. "0.1.0". */
CPTUNE_LOOKUP_API const char* cptune_lookup_library_version(void);

/* Loads the rows of fp from db_path. On success *out is a handle for cptune_lookup_close; on
 * failure *out is NULL. A fingerprint with no rows is a success with no measured shapes.
 * db_path CPTUNE_LOOKUP_NO_DATABASE (or NULL): no database; every query is the simulator's pick on
 * the preset fp's device names (CPTUNE_LOOKUP_HARDWARE_AUTO). A named file that does not exist
 * stays CPTUNE_LOOKUP_ERROR_DATABASE. */
CPTUNE_LOOKUP_API int cptune_lookup_open(const char* db_path, const cptune_fingerprint* fp, cptune_lookup** out);
/* As cptune_lookup_open, and a shape whose family has no measurement gets the simulator's pick
 * (source CPTUNE_LOOKUP_SOURCE_SIMULATED) on the cluster of fp, described by `hardware`: a preset
 * name ("h100-sxm", "h200", "a100", "l20", "cpu-gloo") or the path of a hardware JSON file, e.g.
 * one written by `cptune calibrate`, or CPTUNE_LOOKUP_HARDWARE_AUTO. NULL or "" behaves like
 * cptune_lookup_open. A hardware description that cannot be read is
 * CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT. */
CPTUNE_LOOKUP_API int cptune_lookup_open_with_simulator(const char* db_path, const cptune_fingerprint* fp,
                                                        const char* hardware, cptune_lookup** out);
/* Added in 0.2 (ABI 1, no struct changed). This machine's fingerprint for `backend` ("gloo":
 * device_model "cpu"; "nccl": the GPU model the NVIDIA driver reports), world and ranks_per_node
 * (nodes derived), any library and cptune versions. `hardware` as for
 * cptune_lookup_open_with_simulator. `engine` NULL or "": every layout; otherwise only layouts that
 * engine can run (the names cptune_lookup_engines lists): a measured best it cannot express is
 * passed over for its best expressible measurement, else the simulator's best expressible layout.
 * db_path as for cptune_lookup_open. */
CPTUNE_LOOKUP_API int cptune_lookup_open_local(const char* db_path, const char* backend, int64_t world,
                                               int64_t ranks_per_node, const char* hardware, const char* engine,
                                               cptune_lookup** out);
/* Added in ABI minor 2: cptune_lookup_open_local for one pass, `pass` "fwd" (what every other
 * open function answers), "bwd" or "fwd+bwd" (NULL or "": "fwd"). Only measurements of that pass
 * answer, the simulator prices that pass, and with an engine the layouts it runs forward only are
 * never answered for a pass with a backward. An unknown pass is CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT. */
CPTUNE_LOOKUP_API int cptune_lookup_open_local_pass(const char* db_path, const char* backend, int64_t world,
                                                    int64_t ranks_per_node, const char* hardware, const char* engine,
                                                    const char* pass, cptune_lookup** out);
/* Writes the fingerprints db_path holds, one line each ("id backend device P=.. G=.. nodes=..
 * shapes=N (library versions; cptune version)"), NUL-terminated, into buffer (size bytes; NULL
 * with size 0 asks only for the size). *needed gets the bytes needed, NUL included; a buffer too
 * small is CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT with *needed set. */
CPTUNE_LOOKUP_API int cptune_lookup_list_fingerprints(const char* db_path, char* buffer, size_t size,
                                                      size_t* needed);
/* The engine's own configuration for a choice on a shape, NUL-terminated into buffer: format
 * "args" (flags), "json" (one object) or "python" (e.g. "ContextParallelConfig(ulysses_degree=4)").
 * *needed as above. A layout the engine cannot express is CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT. */
CPTUNE_LOOKUP_API int cptune_lookup_engine_config(const char* engine, const cptune_shape* shape,
                                                  const cptune_choice* choice, const char* format, char* buffer,
                                                  size_t size, size_t* needed);

/* Added in ABI minor 1: the engines with a profile, one name a line ("sglang\ndiffusers\n..."),
 * NUL-terminated into buffer; *needed as for cptune_lookup_list_fingerprints. */
CPTUNE_LOOKUP_API int cptune_lookup_engines(char* buffer, size_t size, size_t* needed);

/* Fills *out and returns CPTUNE_LOOKUP_OK, or returns CPTUNE_LOOKUP_NOT_FOUND or an error. A
 * CPTUNE_LOOKUP_NOT_FOUND's message names the rule that refused the simulator's last candidate. */
CPTUNE_LOOKUP_API int cptune_lookup_query(const cptune_lookup* lookup, const cptune_shape* shape, cptune_choice* out);

/* Added in 0.3 (ABI 1, no struct changed): block-sparse masks made once, used by many queries.
 * The cell values of cptune_lookup_mask_from_cells. */
#define CPTUNE_LOOKUP_BLOCK_EMPTY 0  /* no pair of the two blocks is visible */
#define CPTUNE_LOOKUP_BLOCK_FULL 1   /* every pair */
#define CPTUNE_LOOKUP_BLOCK_CAUSAL 2 /* the pairs whose key position is at most the query position */
/* A mask from any text cptune_shape.mask takes; a table file (blocks:FILE) is read here, once.
 * A bad text is CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT naming it; *out is NULL then. */
CPTUNE_LOOKUP_API int cptune_lookup_mask_create(const char* text, cptune_lookup_mask** out);
/* A block mask from its table: blocks (N, 1..256) x blocks cells, row by row (query block major),
 * each a CPTUNE_LOOKUP_BLOCK_* value. Each sequence is cut into N blocks by torch.tensor_split's
 * rule, as the CLI's masks are. */
CPTUNE_LOOKUP_API int cptune_lookup_mask_from_cells(int64_t blocks, const uint8_t* cells, cptune_lookup_mask** out);
/* The mask's canonical text (what the store and `cptune mask show` print, and every mask text
 * argument reads back), NUL-terminated into buffer; *needed as for cptune_lookup_list_fingerprints. */
CPTUNE_LOOKUP_API int cptune_lookup_mask_text(const cptune_lookup_mask* mask, char* buffer, size_t size,
                                              size_t* needed);
/* Frees the mask; NULL is a no-op. */
CPTUNE_LOOKUP_API void cptune_lookup_mask_free(cptune_lookup_mask* mask);
/* cptune_lookup_query with `mask` as the shape's mask; shape->mask is not read. */
CPTUNE_LOOKUP_API int cptune_lookup_query_masked(const cptune_lookup* lookup, const cptune_shape* shape,
                                                 const cptune_lookup_mask* mask, cptune_choice* out);

/* Shapes measured under the fingerprint (0 when it has no rows); 0 for NULL. */
CPTUNE_LOOKUP_API size_t cptune_lookup_shapes(const cptune_lookup* lookup);
/* Frees the handle; NULL is a no-op. */
CPTUNE_LOOKUP_API void cptune_lookup_close(cptune_lookup* lookup);

/* Message of the most recent failed call on this thread ("" if none); valid until the next
 * failed call on this thread. A query that returns CPTUNE_LOOKUP_NOT_FOUND sets it too: the
 * fingerprint asked for and the closest one the database holds. */
CPTUNE_LOOKUP_API const char* cptune_lookup_last_error(void);
/* "ok", "not-found", "null-argument", ...; "unknown" for other values. */
CPTUNE_LOOKUP_API const char* cptune_lookup_status_name(int status);
/* "exact", "nearest", "simulated"; "unknown" for other values. */
CPTUNE_LOOKUP_API const char* cptune_lookup_source_name(int source);

#ifdef __cplusplus
}
#endif

#endif /* CPTUNE_LOOKUP_H */
