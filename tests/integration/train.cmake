# Trainer integration: the Slurm job script on a real one-node Slurm (slow; skips where Slurm or
# munge cannot run).
if(TARGET train_resnet18)
  add_test(NAME train_slurm_job
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/slurm_train.sh $<TARGET_FILE:train_resnet18> ${PROJECT_SOURCE_DIR})
  set_tests_properties(train_slurm_job PROPERTIES LABELS "train;slow;integration" TIMEOUT 600 SKIP_RETURN_CODE 77)
endif()
