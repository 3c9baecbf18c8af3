/* Shared by the protobuf fuzz targets: the first input byte picks the
 * message type, indexing the types that pb.messages() lists (every message
 * but map entries, which are reached through their maps), modulo their
 * count. spec/fuzz/make_seeds.lua writes seeds with the same numbering. */
#ifndef KL_FUZZ_PB_H
#define KL_FUZZ_PB_H

#include "pb/pb.h"

#include <string.h>

static inline int fuzz_is_map_entry(const ProtobufCMessageDescriptor *d)
{
    size_t n = strlen(d->name);
    return n > 5 && strcmp(d->name + n - 5, "Entry") == 0;
}

static inline const ProtobufCMessageDescriptor *fuzz_message(unsigned pick)
{
    size_t n = 0;
    for (const ProtobufCMessageDescriptor *const *m = kl_pb_all_messages; *m != NULL; m++)
        n += !fuzz_is_map_entry(*m);
    pick %= (unsigned)n;
    for (const ProtobufCMessageDescriptor *const *m = kl_pb_all_messages;; m++)
        if (!fuzz_is_map_entry(*m) && pick-- == 0)
            return *m;
}

#endif
