# CPU op tests: naive loops, finite differences, and PyTorch references computed at test time.
ddp_add_gtest(test_cpu_ops
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ops.cpp ${CMAKE_CURRENT_LIST_DIR}/test_ops_torch.cpp
  LIBS ddp_cpu_ops
  LABELS cpu)
target_compile_definitions(test_cpu_ops PRIVATE DDP_TORCH_OPS_REF="${CMAKE_CURRENT_LIST_DIR}/torch_ops_ref.py")
