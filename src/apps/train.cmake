# train_resnet18: the product's training program (thin main over ddp_train).
add_executable(train_resnet18 ${CMAKE_CURRENT_SOURCE_DIR}/train_resnet18.cpp)
target_link_libraries(train_resnet18 PRIVATE ddp_train)
