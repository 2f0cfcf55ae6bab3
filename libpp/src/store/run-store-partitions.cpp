// RunStore: partitions and their stages.
#include <unordered_map>

#include "pp/store/run-store.h"
#include "store/run-store-detail.h"

namespace pp {
namespace {

constexpr const char* kPartitionColumns =
    "id, created_at_ms, source_path, source_checksum, model_config_json, pp, strategy, "
    "plan_json, output_dir, dtype, bytes";

PartitionRecord read_partition(const sqlite::Statement& st) {
  PartitionRecord p;
  p.id = st.int64(0);
  p.created_at_ms = st.int64(1);
  p.source_path = st.text(2);
  p.source_checksum = st.text(3);
  p.model_config_json = st.text(4);
  p.pp = st.int32(5);
  p.strategy = st.text(6);
  p.plan_json = st.text(7);
  p.output_dir = st.text(8);
  p.dtype = st.text(9);
  p.bytes = st.int64(10);
  return p;
}

// Reads the stages of the partitions in `parts` (by id), in stage order.
Status read_partition_stages(sqlite::Database& db, std::vector<PartitionRecord>& parts,
                             std::optional<int64_t> only_id) {
  std::unordered_map<int64_t, PartitionRecord*> by_id;
  for (auto& p : parts) by_id[p.id] = &p;
  PP_ASSIGN_OR_RETURN(
      sqlite::Statement st,
      db.prepare("SELECT partition_id, stage, layer_begin, layer_end, has_embedding, "
                 "has_lm_head, file, bytes, sha256 FROM partition_stages "
                 "WHERE (?1 IS NULL OR partition_id = ?1) ORDER BY partition_id, stage"));
  st.bind(1, only_id);
  for (;;) {
    PP_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    auto it = by_id.find(st.int64(0));
    if (it == by_id.end()) continue;  // a partition recorded after the first query
    PartitionStageRecord s;
    s.stage = st.int32(1);
    s.layer_begin = st.int32(2);
    s.layer_end = st.int32(3);
    s.has_embedding = st.int64(4) != 0;
    s.has_lm_head = st.int64(5) != 0;
    s.file = st.text(6);
    s.bytes = st.int64(7);
    s.sha256 = st.text(8);
    it->second->stages.push_back(std::move(s));
  }
  return ok_status();
}

}  // namespace

Result<int64_t> RunStore::record_partition(const PartitionRecord& p) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(store_detail::require_writable(*this));
  return store_detail::write_txn<int64_t>(*db_, [&](sqlite::Database& db) -> Result<int64_t> {
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement ins,
        db.prepare("INSERT INTO partitions (created_at_ms, source_path, source_checksum, "
                   "model_config_json, pp, strategy, plan_json, output_dir, dtype, bytes) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    ins.bind(1, p.created_at_ms ? p.created_at_ms : unix_ms_now())
        .bind(2, p.source_path)
        .bind(3, p.source_checksum)
        .bind(4, p.model_config_json)
        .bind(5, p.pp)
        .bind(6, p.strategy)
        .bind(7, p.plan_json)
        .bind(8, p.output_dir)
        .bind(9, p.dtype)
        .bind(10, p.bytes);
    Status s = ins.run();
    if (!s.ok()) return s.with_context("recording a partition");
    const int64_t id = db.last_insert_rowid();
    PP_ASSIGN_OR_RETURN(
        sqlite::Statement stage_ins,
        db.prepare("INSERT INTO partition_stages (partition_id, stage, layer_begin, layer_end, "
                   "has_embedding, has_lm_head, file, bytes, sha256) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    for (const PartitionStageRecord& ps : p.stages) {
      stage_ins.bind(1, id)
          .bind(2, ps.stage)
          .bind(3, ps.layer_begin)
          .bind(4, ps.layer_end)
          .bind(5, ps.has_embedding)
          .bind(6, ps.has_lm_head)
          .bind(7, ps.file)
          .bind(8, ps.bytes)
          .bind(9, ps.sha256);
      s = stage_ins.run();
      if (!s.ok())
        return s.with_context(fmt::format("recording stage {} of a partition", ps.stage));
    }
    return id;
  });
}

Result<PartitionRecord> RunStore::get_partition(int64_t id) {
  std::lock_guard lock(mu_);
  return store_detail::read_retry<PartitionRecord>(
      *db_, [&](sqlite::Database& db) -> Result<PartitionRecord> {
        PP_ASSIGN_OR_RETURN(
            sqlite::Statement st,
            db.prepare(fmt::format("SELECT {} FROM partitions WHERE id = ?", kPartitionColumns)));
        st.bind(1, id);
        PP_ASSIGN_OR_RETURN(bool row, st.step());
        if (!row) return not_found("{} has no partition {}", db.label(), id);
        std::vector<PartitionRecord> parts{read_partition(st)};
        PP_RETURN_IF_ERROR(read_partition_stages(db, parts, id));
        return std::move(parts[0]);
      });
}

Result<std::vector<PartitionRecord>> RunStore::list_partitions() {
  std::lock_guard lock(mu_);
  using Parts = std::vector<PartitionRecord>;
  return store_detail::read_retry<Parts>(*db_, [&](sqlite::Database& db) -> Result<Parts> {
    PP_ASSIGN_OR_RETURN(sqlite::Statement st,
                        db.prepare(fmt::format("SELECT {} FROM partitions ORDER BY "
                                               "created_at_ms, id",
                                               kPartitionColumns)));
    Parts parts;
    for (;;) {
      PP_ASSIGN_OR_RETURN(bool row, st.step());
      if (!row) break;
      parts.push_back(read_partition(st));
    }
    PP_RETURN_IF_ERROR(read_partition_stages(db, parts, std::nullopt));
    return parts;
  });
}

}  // namespace pp
