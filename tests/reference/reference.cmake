# CpuResNet18 against torchvision (Debian's /usr/bin/python3 with torch, torchvision, h5py).
ddp_add_gtest(test_vs_pytorch
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_vs_pytorch.cpp
  LIBS ddp_cpu ddp_weights
  LABELS reference slow
  TIMEOUT 600)
target_compile_definitions(test_vs_pytorch PRIVATE
  DDP_TORCH_REFERENCE_PY="${CMAKE_CURRENT_SOURCE_DIR}/torch_reference.py")
