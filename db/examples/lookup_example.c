/* lookup_example: the smallest engine. Asks the cptune lookup library which layout to run for
 * one attention shape and prints the answer. Built against an installed cptune with
 *   cc lookup_example.c $(pkg-config --cflags --libs cptune-lookup)
 * or with CMake: find_package(cptune) and target_link_libraries(... cptune::lookup).
 *
 * usage: lookup_example DB BACKEND DEVICE WORLD RANKS_PER_NODE SEQ_LEN Q_HEADS KV_HEADS HEAD_DIM DTYPE MASK
 * MASK: any text of cptune's --mask ("causal", "star:16", "blocks:table.txt"), made once into a
 * cptune_lookup_mask as an engine that asks often would.
 * prints: <source> <strategy> U=<u> R=<r> <rank order> <head policy> <seconds>
 * exit code: 0 an answer, 1 no answer, 2 an error (message on stderr). */
#include <stdio.h>
#include <stdlib.h>

#include <cptune_lookup.h>

int main(int argc, char** argv) {
  if (argc != 12) {
    fprintf(stderr, "usage: %s DB BACKEND DEVICE WORLD RANKS_PER_NODE SEQ_LEN Q_HEADS KV_HEADS HEAD_DIM DTYPE MASK\n",
            argv[0]);
    return 2;
  }
  if (cptune_lookup_version() != CPTUNE_LOOKUP_ABI_VERSION) {
    fprintf(stderr, "libcptune_lookup has ABI %d, this program was built for %d\n", cptune_lookup_version(),
            CPTUNE_LOOKUP_ABI_VERSION);
    return 2;
  }
  const int64_t world = atoll(argv[4]);
  const int64_t ranks_per_node = atoll(argv[5]);
  const int64_t nodes = (world + ranks_per_node - 1) / ranks_per_node;
  cptune_fingerprint fp = {sizeof fp, argv[2], argv[3], world, ranks_per_node, nodes, NULL, NULL};
  cptune_lookup* lookup = NULL;
  int status = cptune_lookup_open(argv[1], &fp, &lookup);
  if (status != CPTUNE_LOOKUP_OK) {
    fprintf(stderr, "%s: %s\n", cptune_lookup_status_name(status), cptune_lookup_last_error());
    return 2;
  }
  cptune_lookup_mask* mask = NULL;
  status = cptune_lookup_mask_create(argv[11], &mask);
  if (status != CPTUNE_LOOKUP_OK) {
    fprintf(stderr, "%s: %s\n", cptune_lookup_status_name(status), cptune_lookup_last_error());
    cptune_lookup_close(lookup);
    return 2;
  }
  const int64_t seq_len = atoll(argv[6]);
  cptune_shape shape = {sizeof shape, 1,         &seq_len, 1, atoll(argv[7]), atoll(argv[8]),
                        atoll(argv[9]), 0, argv[10], NULL};
  cptune_choice choice = {sizeof choice};
  status = cptune_lookup_query_masked(lookup, &shape, mask, &choice);
  cptune_lookup_mask_free(mask);
  cptune_lookup_close(lookup);
  if (status == CPTUNE_LOOKUP_NOT_FOUND) {
    printf("not-found\n");
    return 1;
  }
  if (status != CPTUNE_LOOKUP_OK) {
    fprintf(stderr, "%s: %s\n", cptune_lookup_status_name(status), cptune_lookup_last_error());
    return 2;
  }
  printf("%s %s U=%lld R=%lld %s %s %.9g\n", cptune_lookup_source_name(choice.source), choice.strategy,
         (long long)choice.ulysses, (long long)choice.ring, choice.rank_order, choice.head_policy, choice.time_s);
  return 0;
}
