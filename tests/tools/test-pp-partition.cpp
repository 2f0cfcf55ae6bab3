// End-to-end tests of pp-partition through the binary: plan tables (from the config alone),
// split (--tp N too) + verify + inspect + list through a run store, readability of the shards by
// the `safetensors` Python package, bad input giving one line on stderr and a non-zero exit (a full
// disk included, simulated with a file-size limit), SIGINT leaving nothing behind, and that
// `--help` of every subcommand and the man page name the same options.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../pp/test-partition-model.h"
#include "pp/model/tokenizer.h"
#include "pp/partition/partition-reader.h"
#include "test-http-util.h"
#include "test-util.h"

namespace pp {
namespace {

namespace fs = std::filesystem;

fs::path tool() { return fs::path(PP_BUILD_DIR) / "tools" / "pp-partition"; }

struct ToolRun {
  int rc = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `pp-partition ARGS` through the shell (with `prefix` shell commands before it).
ToolRun run(const std::string& args, const std::string& prefix = "") {
  static test::TempDir io;
  fs::path out = io.path() / "out", err = io.path() / "err";
  std::string cmd = prefix + " " + quote(tool().string()) + " " + args + " >" +
                    quote(out.string()) + " 2>" + quote(err.string());
  int st = std::system(("/bin/sh -c " + quote(cmd)).c_str());
  ToolRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

int count_lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

std::vector<std::string> leftovers(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().starts_with(prefix)) out.push_back(e.path().filename());
  }
  return out;
}

class PpPartition : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(tool())) << "build pp-partition first: " << tool();
  }
  test::TempDir tmp_;
  std::string db() const { return quote((tmp_.path() / "runs.db").string()); }
};

TEST_F(PpPartition, HelpAndManPageNameTheSameOptions) {
  std::regex opt("--([a-z][a-z0-9-]*)");
  std::set<std::string> help;
  for (const char* sub : {"", "plan", "split", "verify", "inspect", "list"}) {
    ToolRun r = run(std::string(sub) + " --help");
    ASSERT_EQ(r.rc, 0) << sub << ": " << r.err;
    std::set<std::string> here;
    for (std::sregex_iterator it(r.out.begin(), r.out.end(), opt), end; it != end; ++it) {
      here.insert((*it)[1]);
    }
    EXPECT_TRUE(here.count("help")) << sub;
    if (std::string(sub) != "") EXPECT_TRUE(here.count("db")) << sub << " lacks --db";
    help.insert(here.begin(), here.end());
  }
  // The man page writes a dash as "\-".
  std::string man = slurp(test::source_dir() / "man" / "pp-partition.1");
  ASSERT_FALSE(man.empty());
  std::string plain = std::regex_replace(man, std::regex(R"(\\-)"), "-");
  std::set<std::string> in_man;
  for (std::sregex_iterator it(plain.begin(), plain.end(), opt), end; it != end; ++it) {
    in_man.insert((*it)[1]);
  }
  for (const auto& o : help)
    EXPECT_TRUE(in_man.count(o)) << "--" << o << " missing from the man page";
  for (const auto& o : in_man)
    EXPECT_TRUE(help.count(o)) << "--" << o << " is in the man page only";
  EXPECT_GE(help.size(), 11u);
}

TEST_F(PpPartition, PlanReadsOnlyTheConfig) {
  fs::path m = test::write_random_llama(tmp_.path() / "m", 6, false);
  // Garbage weights: a plan must not read them.
  std::ofstream(m / "model.safetensors", std::ios::trunc) << "not a safetensors file";
  ToolRun r = run("plan " + quote(m.string()) + " --pp 3 --strategy cost --dtype f32");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("predicted slowest stage"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("strategy cost, dtype f32"), std::string::npos) << r.out;
  EXPECT_EQ(count_lines(r.out), 5) << r.out;  // header, 3 stages, summary
  // And split does read them: a one-line error.
  ToolRun s = run("split " + quote(m.string()) + " --pp 3 -o " +
                  quote((tmp_.path() / "p").string()) + " --db " + db());
  EXPECT_NE(s.rc, 0);
  EXPECT_EQ(count_lines(s.err), 1) << s.err;
  EXPECT_FALSE(fs::exists(tmp_.path() / "p"));
}

TEST_F(PpPartition, PlanOnDefaultGguf) {
  fs::path p = test::default_model_path();
  if (!fs::exists(p)) GTEST_SKIP() << "no default model at " << p;
  ToolRun r = run("plan " + quote(p.string()) + " --pp 4 --layers 0-6,7-14,15-22,23-29");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("strategy manual"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("23-29"), std::string::npos) << r.out;
  ToolRun big = run("plan " + quote(p.string()) + " --pp 31");
  EXPECT_EQ(big.rc, 2);
  EXPECT_EQ(count_lines(big.err), 1) << big.err;
  EXPECT_NE(big.err.find("30 layers into 31 stages"), std::string::npos) << big.err;
}

// split --dtype fp8: the layers' linears in fp8 with per-channel scales, checked and shown as
// such; the stage reads back its fp8 tensors through the safetensors reader.
TEST_F(PpPartition, SplitFp8) {
  fs::path m = test::write_random_llama(tmp_.path() / "m", 4, false);
  fs::path dir = tmp_.path() / "part";
  ToolRun s = run("split " + quote(m.string()) + " --pp 2 -o " + quote(dir.string()) +
                  " --dtype fp8 --db " + db());
  ASSERT_EQ(s.rc, 0) << s.err;
  ToolRun v = run("verify " + quote(dir.string()));
  EXPECT_EQ(v.rc, 0) << v.out << v.err;
  ToolRun i = run("inspect " + quote(dir.string()));
  ASSERT_EQ(i.rc, 0) << i.err;
  EXPECT_NE(i.out.find("dtype fp8"), std::string::npos) << i.out;
  auto shard = partition::open_stage(dir, 1);
  ASSERT_TRUE(shard.ok()) << shard.status().message();
  const model::TensorInfo* q = shard->weights->find("model.layers.3.mlp.down_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, model::DType::kF8E4M3);
  EXPECT_EQ(q->scale_kind, kernels::ScaleKind::kPerChannel);
  EXPECT_EQ(shard->weights->find("lm_head.weight")->dtype, model::DType::kBF16);
  EXPECT_EQ(shard->config.quant.method, model::WeightQuantConfig::Method::kCompressedTensors);
}

TEST_F(PpPartition, SplitVerifyInspectList) {
  fs::path m = test::write_random_llama(tmp_.path() / "m", 5, true);
  fs::path dir = tmp_.path() / "part";
  ToolRun s = run("split " + quote(m.string()) + " --pp 3 --strategy cost -o " +
                  quote(dir.string()) + " --dtype bf16 --db " + db());
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_NE(s.out.find("recorded as partition 1"), std::string::npos) << s.out;
  for (const char* f : {"partition.json", "stage-0.safetensors", "stage-1.safetensors",
                        "stage-2.safetensors", "tokenizer.json"}) {
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  }
  EXPECT_EQ(leftovers(tmp_.path(), "part"), std::vector<std::string>{"part"});

  ToolRun v = run("verify " + quote(dir.string()));
  EXPECT_EQ(v.rc, 0) << v.out << v.err;
  EXPECT_EQ(count_lines(v.out), 5) << v.out;  // 3 stages, tokenizer, summary

  ToolRun i = run("inspect " + quote(dir.string()));
  ASSERT_EQ(i.rc, 0) << i.err;
  EXPECT_NE(i.out.find("strategy cost, dtype bf16"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("stage 2: stage-2.safetensors"), std::string::npos) << i.out;

  ToolRun l = run("list --db " + db());
  ASSERT_EQ(l.rc, 0) << l.err;
  EXPECT_NE(l.out.find(dir.string()), std::string::npos) << l.out;
  EXPECT_NE(l.out.find(m.string()), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("cost"), std::string::npos) << l.out;

  // Existing DIR: refused, then replaced with --force; the store then holds both.
  ToolRun again =
      run("split " + quote(m.string()) + " --pp 2 -o " + quote(dir.string()) + " --db " + db());
  EXPECT_EQ(again.rc, 2);
  EXPECT_EQ(count_lines(again.err), 1) << again.err;
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  ToolRun forced = run("split " + quote(m.string()) + " --pp 2 -o " + quote(dir.string()) +
                       " --force --db " + db());
  ASSERT_EQ(forced.rc, 0) << forced.err;
  EXPECT_FALSE(fs::exists(dir / "stage-2.safetensors"));
  EXPECT_EQ(leftovers(tmp_.path(), "part"), std::vector<std::string>{"part"});
  ToolRun l2 = run("list --db " + db());
  EXPECT_NE(l2.out.find("\n   2 "), std::string::npos) << l2.out;

  // A flipped byte fails verification.
  fs::path f = dir / "stage-1.safetensors";
  auto bytes = test::read_file_bytes(f);
  bytes[bytes.size() - 5] ^= 1;
  std::ofstream(f, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ToolRun bad = run("verify " + quote(dir.string()));
  EXPECT_EQ(bad.rc, 2);
  EXPECT_EQ(count_lines(bad.err), 1) << bad.err;
  EXPECT_NE(bad.out.find("BAD   stage-1.safetensors"), std::string::npos) << bad.out;
}

TEST_F(PpPartition, SplitTpWritesAFilePerRank) {
  fs::path m = test::write_random_llama(tmp_.path() / "m", 4, false);
  fs::path dir = tmp_.path() / "part";
  ToolRun s = run("split " + quote(m.string()) + " --pp 2 --tp 2 -o " + quote(dir.string()) +
                  " --db " + db());
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_NE(s.out.find("2 stages of 2 ranks"), std::string::npos) << s.out;
  for (const char* f : {"stage-0-rank-0.safetensors", "stage-0-rank-1.safetensors",
                        "stage-1-rank-0.safetensors", "stage-1-rank-1.safetensors"}) {
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir / "stage-0.safetensors"));

  ToolRun v = run("verify " + quote(dir.string()));
  EXPECT_EQ(v.rc, 0) << v.out << v.err;
  EXPECT_EQ(count_lines(v.out), 6) << v.out;  // 4 rank files, tokenizer, summary

  ToolRun i = run("inspect " + quote(dir.string()));
  ASSERT_EQ(i.rc, 0) << i.err;
  EXPECT_NE(i.out.find("tensor parallel: tp 2"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("stage 1 rank 1: stage-1-rank-1.safetensors"), std::string::npos) << i.out;

  // --tp-size is the same option; a group the model cannot have (4 query heads) is one line.
  ToolRun five = run("split " + quote(m.string()) + " --pp 1 --tp-size 5 -o " +
                     quote((tmp_.path() / "five").string()) + " --db " + db());
  EXPECT_EQ(five.rc, 2) << five.err;
  EXPECT_EQ(count_lines(five.err), 1) << five.err;
  EXPECT_FALSE(fs::exists(tmp_.path() / "five"));
}

TEST_F(PpPartition, ShardsReadableBySafetensorsPython) {
  if (std::system("python3 -c 'import safetensors.numpy' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 with safetensors and numpy not available";
  }
  fs::path m = test::write_random_llama(tmp_.path() / "m", 4, true);
  fs::path dir = tmp_.path() / "part";
  ToolRun s =
      run("split " + quote(m.string()) + " --pp 2 -o " + quote(dir.string()) + " --db " + db());
  ASSERT_EQ(s.rc, 0) << s.err;
  std::string script =
      "import sys\n"
      "from safetensors.numpy import load_file\n"
      "a = load_file(sys.argv[1] + '/stage-0.safetensors')\n"
      "b = load_file(sys.argv[1] + '/stage-1.safetensors')\n"
      "assert 'model.embed_tokens.weight' in a and 'lm_head.weight' in b, (list(a), list(b))\n"
      "assert (a['model.embed_tokens.weight'] == b['lm_head.weight']).all()\n"
      "assert 'model.layers.1.mlp.up_proj.weight' in a and 'model.layers.2.mlp.up_proj.weight' in "
      "b\n"
      "assert a['model.layers.0.self_attn.q_proj.weight'].shape == (32, 32)\n";
  std::ofstream(tmp_.path() / "check.py") << script;
  std::string cmd =
      "python3 " + quote((tmp_.path() / "check.py").string()) + " " + quote(dir.string());
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST_F(PpPartition, BadInputIsOneLineAndNonZero) {
  fs::path m = test::write_random_llama(tmp_.path() / "m", 4, false);
  fs::path unknown = tmp_.path() / "unknown";
  fs::create_directory(unknown);
  {
    std::ifstream in(m / "config.json");
    auto j = nlohmann::json::parse(in);
    j["architectures"] = {"FooForCausalLM"};
    j["model_type"] = "foo";
    std::ofstream(unknown / "config.json") << j.dump();
  }
  fs::path exists = tmp_.path() / "exists";
  fs::create_directory(exists);
  const std::string M = quote(m.string());
  const std::string out = " -o " + quote((tmp_.path() / "p").string()) + " --db " + db();
  struct Case {
    std::string args;
    std::string expect;  // part of the message
  };
  std::vector<Case> cases = {
      {"plan " + quote((tmp_.path() / "missing").string()) + " --pp 2", "cannot open"},
      {"plan " + quote(unknown.string()) + " --pp 2", "FooForCausalLM"},
      {"plan " + M + " --pp 5", "4 layers into 5 stages"},
      {"plan " + M + " --pp 0", "at least 1"},
      {"plan " + M + " --pp 2 --layers 0-2,2-3", "overlap"},
      {"plan " + M + " --pp 2 --layers 0-1,3", "leaves out layer 2"},
      {"plan " + M + " --pp 2 --layers 0-1,2-4", "out of range"},
      {"plan " + M + " --pp 2 --layers 2-3,0-1", "out of order"},
      {"plan " + M + " --pp 3 --layers 0-1,2-3", "--pp is 3"},
      {"plan " + M + " --pp 2 --strategy even --layers 0-1,2-3", "--strategy manual"},
      {"plan " + M + " --pp 2 --strategy fast", "unknown strategy"},
      {"plan " + M + " --pp 2 --dtype q4", "unknown dtype"},
      {"split " + M + " --pp 2 --dtype fp9" + out, "(expected bf16, f16, f32 or fp8)"},
      {"plan " + M + " --pp 2 --device-memory 80XB", "invalid size"},
      {"plan " + M + " --pp 2 --device-memory 1KiB", "does not fit"},
      {"plan " + M + " --pp 2 --device-memory 1GiB,1GiB,1GiB", "--device-memory gives 3"},
      {"plan " + M, "--pp is required"},
      {"plan " + M + " --pp 2 --bogus", "bogus"},
      {"split " + M + " --pp 2 -o " + quote(exists.string()) + " --db " + db(), "already exists"},
      {"split " + M + " --pp 2 -o " + quote((tmp_.path() / "no" / "dir").string()) + " --db " +
           db(),
       "does not exist"},
      {"split " + quote(unknown.string()) + " --pp 2" + out, "FooForCausalLM"},
      {"verify " + quote(m.string()), "partition.json"},
      {"inspect " + quote((tmp_.path() / "missing").string()), "not a partition"},
      {"", "subcommand"},
  };
  for (const Case& c : cases) {
    ToolRun r = run(c.args);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_EQ(count_lines(r.err), 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find("pp-partition"), std::string::npos) << c.args << "\n" << r.err;
  }
  EXPECT_FALSE(fs::exists(tmp_.path() / "p"));
  EXPECT_TRUE(leftovers(tmp_.path(), "p.tmp").empty());
}

TEST_F(PpPartition, FullDiskLeavesNothing) {
  // A file-size limit makes writes fail as a full disk does (EFBIG instead of ENOSPC); SIGXFSZ
  // is ignored so that the write returns an error instead of killing the process.
  fs::path m = test::write_random_llama(tmp_.path() / "m", 4, false, 4096);
  fs::path dir = tmp_.path() / "part";
  ToolRun r = run("split " + quote(m.string()) + " --pp 2 --dtype f32 -o " + quote(dir.string()) +
                      " --db " + db(),
                  "trap '' XFSZ; ulimit -f 256;");
  EXPECT_NE(r.rc, 0);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(leftovers(tmp_.path(), "part").empty());
}

TEST_F(PpPartition, InterruptLeavesNothing) {
  fs::path p = test::default_model_path();
  if (!fs::exists(p)) GTEST_SKIP() << "no default model at " << p;
  fs::path dir = tmp_.path() / "part";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    std::string d = dir.string(), dbp = (tmp_.path() / "runs.db").string();
    execl(tool().c_str(), "pp-partition", "split", p.c_str(), "--pp", "4", "--dtype", "f32", "-o",
          d.c_str(), "--db", dbp.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Wait until the temporary folder appears (the write is under way), then interrupt.
  for (int i = 0; i < 400 && leftovers(tmp_.path(), "part.tmp").empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  kill(pid, SIGINT);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 130);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(leftovers(tmp_.path(), "part").empty());
}

// inspect --export-tokenizer: from a Hugging Face folder, a GGUF file (when the default model is
// here) and a partition; the files read back encode as the model's own tokenizer. Bad input:
// one line, exit 2.
TEST_F(PpPartition, ExportTokenizerWritesFilesThatEncodeTheSame) {
  const fs::path hf = test::make_tiny_chat_model(tmp_.path() / "tiny-chat");
  const fs::path out = tmp_.path() / "tok";
  ToolRun r = run("inspect " + quote(hf.string()) + " --export-tokenizer " + quote(out.string()) +
                  " --db " + db());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("tokenizer_config.json"), std::string::npos) << r.out;
  auto mine = model::Tokenizer::from_hf_file(hf / "tokenizer.json");
  auto theirs = model::Tokenizer::from_hf_file(out / "tokenizer.json");
  ASSERT_TRUE(mine.ok() && theirs.ok());
  EXPECT_EQ((*theirs)->encode("<|im_start|>hello", true),
            (*mine)->encode("<|im_start|>hello", true));
  nlohmann::json config = nlohmann::json::parse(slurp(out / "tokenizer_config.json"));
  EXPECT_EQ(config["eos_token"], "<|im_end|>");
  EXPECT_EQ(config["add_bos_token"], false);  // its tokenizer.json has no post-processor
  EXPECT_EQ(config["model_max_length"], 512);
  EXPECT_TRUE(config["chat_template"].get<std::string>().find("im_start") != std::string::npos);

  // A partition exports its own tokenizer after its table.
  const fs::path part = tmp_.path() / "part";
  ASSERT_EQ(
      run("split " + quote(hf.string()) + " --pp 2 -o " + quote(part.string()) + " --db " + db())
          .rc,
      0);
  ToolRun p = run("inspect " + quote(part.string()) + " --export-tokenizer " +
                  quote((tmp_.path() / "tok2").string()) + " --db " + db());
  ASSERT_EQ(p.rc, 0) << p.err;
  EXPECT_NE(p.out.find("stage 1:"), std::string::npos) << p.out;
  EXPECT_EQ(slurp(tmp_.path() / "tok2" / "tokenizer.json"), slurp(out / "tokenizer.json"));

  if (fs::exists(test::default_model_path())) {
    const fs::path g = tmp_.path() / "smol";
    ToolRun gg = run("inspect " + quote(test::default_model_path().string()) +
                     " --export-tokenizer " + quote(g.string()) + " --db " + db());
    ASSERT_EQ(gg.rc, 0) << gg.err;
    // SmolLM2's GGUF says add_bos_token false: the exported tokenizer adds none either.
    EXPECT_EQ(nlohmann::json::parse(slurp(g / "tokenizer_config.json"))["add_bos_token"], false);
  }

  for (const std::string& bad :
       {std::string("inspect /nonexistent --export-tokenizer ") + quote(out.string()),
        "inspect " + quote(hf.string()) + " --export-tokenizr x"}) {
    SCOPED_TRACE(bad);
    ToolRun b = run(bad + " --db " + db());
    EXPECT_EQ(b.rc, 2) << b.err;
    EXPECT_EQ(count_lines(b.err), 1) << b.err;
  }
}

}  // namespace
}  // namespace pp
