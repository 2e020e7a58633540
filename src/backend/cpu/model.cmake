# ddp_cpu: the CPU ResNet18 (CpuResNet18) and the SGD update, on top of ddp_cpu_ops.
add_library(ddp_cpu ${CMAKE_CURRENT_SOURCE_DIR}/resnet18_cpu.cpp ${CMAKE_CURRENT_SOURCE_DIR}/sgd.cpp)
target_link_libraries(ddp_cpu PUBLIC ddp_nn ddp_cpu_ops PRIVATE OpenMP::OpenMP_CXX)
# GCC contracts a * b + c into FMAs in C++ by default, and in the SGD loop it did so differently in the
# vectorised body and in the scalar peel and tail (objdump: vmulps + vaddps beside vfmadd231ss), so an
# element's update depended on where its thread's share began (other bits for another thread count).
# With each operation rounded on its own it is the same everywhere (test SgdUpdate.SameBitsForAnyThreadCount);
# the pass is memory-bound, so the FMAs bought little.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/sgd.cpp PROPERTIES COMPILE_OPTIONS -ffp-contract=off)

# CPU training throughput on synthetic data (tools/bench/cpu_train.sh compares it with PyTorch).
if(TARGET ddp_cpu_ops)
  add_executable(bench_cpu_train ${CMAKE_CURRENT_SOURCE_DIR}/bench_cpu_train.cpp)
  target_link_libraries(bench_cpu_train PRIVATE ddp_cpu)
endif()
