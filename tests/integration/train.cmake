# Trainer integration: the quick start's pipeline in miniature (Fashion-MNIST subset -> pack_imagenet
# -> mpirun -np 2 train_resnet18 with exact evaluation), the same on two nodes, and the Slurm job script on a real one-node
# Slurm including a SIGUSR1 preemption and resume, and the job's self-requeue after the time-limit
# signal (slow; exit 77 = skipped where they cannot run).
if(TARGET train_resnet18 AND TARGET pack_imagenet AND TARGET fashion_mnist_to_jpeg)
  add_test(NAME train_on_shards
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/train_shards.sh $<TARGET_FILE:train_resnet18>
                   $<TARGET_FILE:pack_imagenet> $<TARGET_FILE:fashion_mnist_to_jpeg> ${MPIEXEC_EXECUTABLE})
  set_tests_properties(train_on_shards PROPERTIES LABELS "train;slow;integration" TIMEOUT 900 SKIP_RETURN_CODE 77)
  # Two nodes (network namespaces) with --shard-scope node: node-local shares, a shared set, a node
  # with another packing or with shards of another input, shards of an older pack_imagenet, unequal
  # ranks per node, and global scope over node-local shares.
  add_executable(h5_delete_attr ${CMAKE_CURRENT_SOURCE_DIR}/h5_delete_attr.cpp)
  target_link_libraries(h5_delete_attr PRIVATE ddp_h5)
  add_test(NAME train_two_nodes
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/train_two_nodes.sh $<TARGET_FILE:train_resnet18>
                   $<TARGET_FILE:pack_imagenet> $<TARGET_FILE:fashion_mnist_to_jpeg> ${MPIEXEC_EXECUTABLE}
                   $<TARGET_FILE:h5_delete_attr>)
  set_tests_properties(train_two_nodes PROPERTIES LABELS "train;slow;integration" TIMEOUT 600 SKIP_RETURN_CODE 77)
endif()
if(TARGET train_resnet18)
  add_test(NAME train_slurm_job
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm_train.sh $<TARGET_FILE:train_resnet18> ${PROJECT_SOURCE_DIR})
  # Each starts a Slurm of its own on this host (same node name); one at a time keeps the 2-core CI
  # machine's load low enough for slurmd's step launches (one failed once under -j2 with both running).
  set_tests_properties(train_slurm_job PROPERTIES LABELS "train;slow;integration" TIMEOUT 600 SKIP_RETURN_CODE 77
                       RESOURCE_LOCK slurm)
  add_test(NAME train_slurm_requeue
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm_requeue.sh $<TARGET_FILE:train_resnet18> ${PROJECT_SOURCE_DIR})
  set_tests_properties(train_slurm_requeue PROPERTIES LABELS "train;slow;integration" TIMEOUT 600 SKIP_RETURN_CODE 77
                       RESOURCE_LOCK slurm)
endif()
