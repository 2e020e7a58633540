# CpuResNet18 against torchvision (Debian's /usr/bin/python3 with torch, torchvision, h5py).
ddp_add_gtest(test_vs_pytorch
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_vs_pytorch.cpp
  LIBS ddp_cpu ddp_weights
  LABELS slow  # ddp_add_gtest keeps only the first label (see the report); "slow" is the one --fast needs
  TIMEOUT 600)
target_compile_definitions(test_vs_pytorch PRIVATE
  DDP_TORCH_REFERENCE_PY="${CMAKE_CURRENT_SOURCE_DIR}/torch_reference.py")
