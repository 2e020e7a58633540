# CpuResNet18 and the SGD update (the comparison with PyTorch is in tests/reference).
ddp_add_gtest(test_resnet18_cpu
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_resnet18_cpu.cpp
  LIBS ddp_cpu
  LABELS cpu)

# Its own process: libgomp keeps a started team, so an earlier test in the same binary would hide it.
ddp_add_gtest(test_cpu_thread_budget
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_thread_budget.cpp
  LIBS ddp_cpu
  LABELS cpu)
