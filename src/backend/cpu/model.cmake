# ddp_cpu: the CPU ResNet18 (CpuResNet18) and the SGD update, on top of ddp_cpu_ops.
add_library(ddp_cpu ${CMAKE_CURRENT_SOURCE_DIR}/resnet18_cpu.cpp ${CMAKE_CURRENT_SOURCE_DIR}/sgd.cpp)
target_link_libraries(ddp_cpu PUBLIC ddp_nn ddp_cpu_ops PRIVATE OpenMP::OpenMP_CXX)

# CPU training throughput on synthetic data (tools/bench/cpu_train.sh compares it with PyTorch).
if(TARGET ddp_cpu_ops)
  add_executable(bench_cpu_train ${CMAKE_CURRENT_SOURCE_DIR}/bench_cpu_train.cpp)
  target_link_libraries(bench_cpu_train PRIVATE ddp_cpu)
endif()
