// The stage worker: the body of pp-stage. It joins a coordinator, loads its layers, and runs
// micro-batches as their plans and activations arrive, until the coordinator says Shutdown or
// goes away.
//
// Protocol (messages.h): Hello (device, free memory, where it receives activations and its
// group's collectives) -> Assign (model, layers, the stage's device group and this worker's
// rank, the group's collective endpoints, next stage's endpoint) ->
// load -> Loaded (KV bytes per block, how many blocks fit) -> AllocateKv -> Ready -> Plans, in
// issue order. Heartbeats flow both ways all along. Everything that touches a device is the
// stage backend's (stage-backend.h); the worker speaks the protocol, mirrors the block tables
// and builds the batches.
//
// Threads:
//  - the I/O thread owns the control socket: it sends what the compute thread posts (Loaded,
//    Tokens, StageTiming, StageError), sends heartbeats, and queues what arrives for the compute
//    thread, stamped with its arrival time. It notices a lost coordinator (the connection
//    dropped, or no message for `coordinator_timeout`) and stops the worker with an error.
//  - the compute thread (the caller of run_stage_worker) takes the next plan, prepares its batch
//    (mirroring each request's block table from the plan's deltas, forgetting released requests)
//    BEFORE taking the activations of that plan from the previous stage (ZeroMQ's I/O thread
//    has been receiving them into its queue all along: the receive is posted ahead), runs its
//    layers, and hands the output to the next stage without waiting for the send to finish.
//    Compute never blocks on the control socket.
//
// Buffers: outputs go to a ring of send buffers, each held by its send until the transport says
// it is done; activations come into a ring of receive buffers, each held until the layers that
// read it have run. The last stage samples each request with its own parameters and seed
// (counter = sample_step) and posts Tokens; for every micro-batch it posts a StageTiming
// (queued, start, end, sent) for the coordinator's trace.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "pp/status.h"

namespace pp::pipeline {

struct StageWorkerOptions {
  std::string coordinator;     // "ipc:///path" or "tcp://HOST:PORT"
  int32_t stage = -1;          // the stage to be (-1: whichever the coordinator assigns)
  int32_t rank = -1;           // the rank in its stage's group (-1: whichever is free)
  std::string device = "cpu";  // "cpu", "cuda" (cuda:0) or "cuda:N" (a build with CUDA)
  // GPU: the share of the device's memory for weights, buffers and KV (SGLang's
  // --mem-fraction-static); 0: what the coordinator says.
  double mem_fraction = 0;
  int32_t threads = 0;  // compute threads; 0: what the coordinator says, else all cores
  // Where to receive activations. With a tcp:// coordinator: the address to bind (empty: the
  // local address that routes to the coordinator). With ipc://: unused (a socket file next to
  // the coordinator's).
  std::string data_address;
  int64_t kv_memory = 0;  // bytes this stage offers for its KV pool; 0: a quarter of MemAvailable
  std::chrono::milliseconds connect_timeout{60000};     // to reach the coordinator at first
  std::chrono::milliseconds coordinator_timeout{5000};  // silence after which it is lost
  std::chrono::milliseconds heartbeat_interval{500};
  // Set from a signal handler to stop the worker (it then ends with kCancelled).
  const std::atomic<bool>* interrupted = nullptr;
};

// Runs a stage until the coordinator's Shutdown (ok) or a failure: the coordinator lost
// (kUnavailable), a bad assignment or model (its error), a compute failure (also reported to
// the coordinator as StageError), an interrupt (kCancelled).
Status run_stage_worker(const StageWorkerOptions& options);

}  // namespace pp::pipeline
