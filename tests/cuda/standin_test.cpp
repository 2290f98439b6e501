// The interposer against the stand-in driver: each scenario of
// standin_scenarios.cpp runs in a fresh process started the way a user starts
// a CUDA program under kvpager (LD_PRELOAD=libkvpager.so), with the stand-in
// libcuda.so.1 first on LD_LIBRARY_PATH and the configuration it needs.
// No GPU is involved anywhere in these tests.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "preload.h"
#include "run_process.h"

namespace kvpager::testing {
namespace {

struct Scenario {
  const char* name;
  std::vector<std::string> env;
  const char* expect_stderr = nullptr;  // a message the run must print
};

const std::vector<std::string> kSpills = {"KVPAGER_HOST_CAPACITY=2M", "KVPAGER_SPILL_IDLE=1h"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const Scenario kScenarios[] = {
    {"RoutesAllocationsByThreshold", {}},
    {"WithoutAUsableStoreThePagerRunsWithoutItsNvmeTier", {"KVPAGER_STORE_DIR=/proc/kvpager-cannot-be-made"},
     "no NVMe tier: store_dir = /proc/kvpager-cannot-be-made"},
    {"ManagedMemoryThatDoesNotStartOnAPageIsLeftToTheDriver", {"CUDA_STANDIN_MANAGED_OFFSET=256"},
     "not on a 4096-byte page"},
    {"AllowAndDenySizeRanges", {"KVPAGER_CUDA_DENY_SIZES=4M-6M", "KVPAGER_CUDA_ALLOW_SIZES=512K-1M"}},
    {"PassesVmmHostAndIpcThroughUntouched", {}, "cuIpcGetMemHandle on"},
    {"AsyncAllocationsBecomeManagedAndAreFreedInStreamOrder", {}},
    {"FreedAllocationsLeaveNoTouchRecordBehind", {}},
    {"AsyncAllocationsPassThroughWhenConfigured", {"KVPAGER_CUDA_ASYNC_ALLOC=passthrough"}},
    {"MemGetInfoReportsTheVirtualCapacityAndFallsAsTheProgramAllocates",
     {"KVPAGER_CUDA_VIRTUAL_CAPACITY=64G", "CUDA_STANDIN_TOTAL_MEM=8589934592"}},
    {"TheManagedCeilingFailsAllocationsWithOutOfMemory", {"KVPAGER_CUDA_MANAGED_LIMIT=64M"}},
    // HBM for 12M: an 8M region is more than half of what references stage,
    // so a reference brings in only the chunk it points into (offsets show).
    {"ScansParameterLayoutsTheDriverDescribes", {"KVPAGER_HBM_BUDGET=12M"}},
    // HBM for 48M: references stage up to 45.6M, regions up to 22M count whole.
    {"EveryRegionAWideKernelPointsIntoIsUsed", {"KVPAGER_HBM_BUDGET=48M"}},
    {"ALaunchNamingMoreRegionsThanOneEventHoldsReferencesEveryOne", {}},
    {"AGraphNamingTooManyChunksCountsTheRestAndStatusSaysSo",
     {"KVPAGER_CHUNK_SIZE=64K", "KVPAGER_HBM_BUDGET=4M", "STANDIN_KVPAGER_BIN=" KVPAGER_BIN}},
    {"RestoresASpilledRegionBeforeALaunchReadsIt", kSpills},
    {"WritesAfterARestoreSurviveTheNextSpill", kSpills},
    {"AServingLoopKeepsTheWeightsAndTheServedSessionInHbm", {"KVPAGER_HBM_BUDGET=32M"}},
    {"RestoresBeforeCopiesAndMemsetsTouchASpilledRegion", kSpills},
    {"AnIdleRegionSpillsAndTheNextLaunchRestoresIt",
     {"KVPAGER_HOST_CAPACITY=2M", "KVPAGER_SPILL_IDLE=50ms", "KVPAGER_HBM_BUDGET=12M"}},
    {"AGraphLaunchRestoresWhatItsNodesRead", kSpills},
    {"AGraphPointingIntoTwoNeighbouringContextsRestoresBoth",
     {"KVPAGER_CHUNK_SIZE=64K", "KVPAGER_HOST_CAPACITY=64K", "KVPAGER_SPILL_IDLE=1h"}},
    {"AnUpdatedGraphIsScannedForItsNewParameters", kSpills},
    {"AKernelNodeGivenNewParametersIsScannedForThem", kSpills},
    {"GraphChangesThroughTheCuda11EntryPointsAreScannedToo", kSpills},
    {"AGraphWithADeviceUpdatableKernelNodeRestoresEverythingBeforeItsLaunch", kSpills},
    {"CopyAndMemsetNodesGivenNewParametersAreScannedForThem", kSpills},
    {"AChildGraphAndANodeChangedByTheGenericCallAreScannedForTheirNewParameters", kSpills},
    {"ALaunchThatCannotBeScannedRestoresEverything", with(kSpills, {"CUDA_STANDIN_NO_PARAM_INFO=1"})},
    // Slow copy-ins: the prefetch's restores are still in flight when the pool launch comes.
    {"ParkedContextsInAPoolStaySpilledWhileOnlyThePoolIsReferenced", with(kSpills, {"CUDA_STANDIN_COPY_DELAY_MS=100"})},
    {"ALaunchRightAfterItsAllocationIsSeen", with(kSpills, {"CUDA_STANDIN_COPY_DELAY_MS=100"})},
    {"ALaunchIntoTheSecondContextOfAPoolRestoresIt", kSpills},
    {"CuttingASpilledRegionKeepsBothPiecesRestoredBeforeLaunches", kSpills},
    {"PerThreadStreamEntryPointsGetTheirOwnWrappers", {}},
    {"PlainDlsymOfDriverSymbolsGivesTheWrappers", {}},
    {"DlsymRtldNextStaysRelativeToItsCaller", {}},
    {"CuGetProcAddressHandsOutItselfWrappedAndWorksBeforeCuInit", {}},
    {"ADriverCallingBackIntoItsOwnEntryPointsDoesNotRecurse", {"CUDA_STANDIN_REENTER=1"}},
    {"ThreadsCallingCudaBeforeThePagerStartsAreHandled", {}},
    {"ALibraryConstructorUsingCudaBeforeMainIsRouted", {"STANDIN_EARLY=1"}},
    {"ForkLeavesTheParentsPagerWorkingAndTheChildSafe", kSpills},
    {"AStreamCaptureHoldsSpillsBackUntilItEnds", kSpills},
    {"TheSpillFenceWaitsForEveryStreamThatUsedTheRegion", kSpills},
    {"ThePreloadedProgramIsVisibleToStatusAndTunable", {"STANDIN_KVPAGER_BIN=" KVPAGER_BIN}},
    {"ALiveLogLevelChangeReachesTheInterposersOwnMessages",
     {"KVPAGER_CUDA_MANAGED_LIMIT=16M", "STANDIN_KVPAGER_BIN=" KVPAGER_BIN}},
    {"PublishWritesAContextSpreadOverEveryTierIntoTheStoreByteExact",
     {"KVPAGER_HOST_CAPACITY=8M", "KVPAGER_SPILL_IDLE=1h", "KVPAGER_HBM_BUDGET=12M"}},
    {"PublishOfAnUnknownContextIsNotFound", {}},
    {"APinThatWouldLeaveNoRoomIsRefusedAndAPinnedContextIsNotParked", {"KVPAGER_HBM_BUDGET=12M"}},
    {"FreeingARegionNeverDiscardsItAheadOfQueuedWork", {}},
    {"ADroppedRangeIsDiscardedAfterQueuedWorkAndPagedAgainWhenReused", {"KVPAGER_HBM_BUDGET=12M"}},
    {"PublishThroughTheControlSocketReachesTheStore", with(kSpills, {"STANDIN_KVPAGER_BIN=" KVPAGER_BIN})},
};

class Preloaded : public ::testing::TestWithParam<Scenario> {};

TEST_P(Preloaded, Scenario) {
  const Scenario& sc = GetParam();
  const std::string store =
      (std::filesystem::temp_directory_path() / ("kvpager-standin-" + std::to_string(getpid()) + "-" + sc.name)).string();
  std::vector<std::string> env = {
      "-KVPAGER_*",  // nothing of the caller's configuration leaks in
      "LD_PRELOAD=" + preload_value(),
      "LD_LIBRARY_PATH=" + std::string(STANDIN_LIB_DIR),
      "KVPAGER_STORE_DIR=" + store,
      "KVPAGER_RUNTIME_DIR=" + store + "/run",  // control sockets stay private to the test
      "ASAN_OPTIONS=detect_leaks=0",
  };
  env.insert(env.end(), sc.env.begin(), sc.env.end());
  ProcessResult r = run_process({SCENARIO_BIN, std::string("--gtest_filter=StandIn.") + sc.name}, env, 120.0);
  std::filesystem::remove_all(store);
  EXPECT_EQ(r.exit_code, 0) << "signal " << r.signal << "\n--- stdout\n" << r.out << "\n--- stderr\n" << r.err;
  EXPECT_NE(r.out.find("[  PASSED  ] 1 test"), std::string::npos) << "the scenario did not run:\n" << r.out;
  if (sc.expect_stderr) {
    EXPECT_NE(r.err.find(sc.expect_stderr), std::string::npos) << r.err;
  }
}

INSTANTIATE_TEST_SUITE_P(StandInDriver, Preloaded, ::testing::ValuesIn(kScenarios),
                         [](const ::testing::TestParamInfo<Scenario>& p) { return std::string(p.param.name); });

// kvpager run: the same program started through the CLI, which validates the
// configuration, passes the knobs it was given and preloads the library.
std::vector<std::string> run_env(const std::string& store) {
  return {"-KVPAGER_*", "-LD_PRELOAD", "LD_LIBRARY_PATH=" + std::string(STANDIN_LIB_DIR), "KVPAGER_STORE_DIR=" + store,
          // (ASan builds: the runtime is not first in a preloaded child; harmless here)
          "ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0"};
}

TEST(KvpagerRunOnStandIn, PreloadsTheLibraryAndHandsItTheKnobs) {
  const std::string store = "/tmp/kvpager-run-" + std::to_string(getpid());
  ProcessResult r = run_process({KVPAGER_BIN, "run", "--set", "cuda.deny_sizes=4M-6M", "--cuda-allow-sizes", "512K-1M",
                                 "--", SCENARIO_BIN, "--gtest_filter=StandIn.AllowAndDenySizeRanges"},
                                run_env(store), 120.0);
  std::filesystem::remove_all(store);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("[  PASSED  ] 1 test"), std::string::npos) << r.out;
}

TEST(KvpagerRunOnStandIn, RefusesABadConfigurationBeforeStarting) {
  ProcessResult r = run_process({KVPAGER_BIN, "run", "--cuda-min-size", "lots", "--", "/bin/true"}, run_env("/tmp"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("cuda.min_size"), std::string::npos) << r.err;
  r = run_process({KVPAGER_BIN, "run", "--lib", "/nonexistent/libkvpager.so", "--", "/bin/true"}, run_env("/tmp"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--lib"), std::string::npos) << r.err;
  r = run_process({KVPAGER_BIN, "run", "--", "/nonexistent/program"}, run_env("/tmp"));
  EXPECT_EQ(r.exit_code, 127) << "a program that cannot be found: 127, as env(1)";
  EXPECT_NE(r.err.find("/nonexistent/program"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kvpager::testing
