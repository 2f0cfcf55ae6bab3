// The run store's schema as an ordered list of migrations, and the code that brings a database
// up to date. Migration N takes a database at schema version N-1 to version N; PRAGMA
// user_version holds the version. Every pending migration, the new user_version and the
// application id are applied in one write transaction: a process killed half way leaves the old
// schema. Never edit a released migration; append a new one.
#pragma once

#include <span>

#include "pp/status.h"
#include "store/sqlite.h"

namespace pp::store_detail {

struct Migration {
  int version;      // the schema version after this migration
  const char* sql;  // statements separated by ';', no values
};

// Every migration, in order; the last one's version is RunStore::kSchemaVersion.
std::span<const Migration> migrations();

// Applies the migrations past the database's user_version inside one BEGIN IMMEDIATE transaction
// (re-reading user_version under the lock, since another process may have migrated meanwhile),
// then sets user_version and application_id. A version newer than the last migration is
// kFailedPrecondition.
Status migrate(sqlite::Database& db, std::span<const Migration> all, int32_t application_id);

}  // namespace pp::store_detail
