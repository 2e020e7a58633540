# CPU op tests: naive loops, finite differences, and PyTorch references computed at test time.
ddp_add_gtest(test_cpu_ops
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ops.cpp ${CMAKE_CURRENT_LIST_DIR}/test_ops_torch.cpp
  LIBS ddp_cpu_ops
  LABELS cpu)
target_compile_definitions(test_cpu_ops PRIVATE DDP_TORCH_OPS_REF="${CMAKE_CURRENT_LIST_DIR}/torch_ops_ref.py")
# The same op checks with the AVX-512 kernels switched off, so the portable loops (CPUs without
# AVX-512) are tested on every machine.
add_test(NAME test_cpu_ops_portable COMMAND test_cpu_ops --gtest_filter=-TorchRef.*)
set_tests_properties(test_cpu_ops_portable PROPERTIES ENVIRONMENT DDP_CPU_NO_AVX512=1 LABELS cpu TIMEOUT 600)

# Not a test: times the convolutions on ResNet18's shapes (tools/bench/cpu_ops.py drives it).
add_executable(ddp_cpu_ops_bench ${PROJECT_SOURCE_DIR}/tools/bench/cpu_ops_bench.cpp)
target_link_libraries(ddp_cpu_ops_bench PRIVATE ddp_cpu_ops)
# Not a test: OpenBLAS threads vs OpenMP-split single-threaded BLAS (docs/perf/cpuops.md).
add_executable(ddp_cpu_ops_gemm_threads ${PROJECT_SOURCE_DIR}/tools/bench/cpu_ops_gemm_threads.cpp)
target_link_libraries(ddp_cpu_ops_gemm_threads PRIVATE ddp_cpu_ops)
target_include_directories(ddp_cpu_ops_gemm_threads PRIVATE ${OPENBLAS_INCLUDE_DIR})
