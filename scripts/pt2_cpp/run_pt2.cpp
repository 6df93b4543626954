// Load a lite3r model.pt2 with torch::inductor::AOTIModelPackageLoader and run it: no Python, no lite3r.
//
//   run_pt2 MODEL.pt2 FRAMES [IMAGES.bin EXPECTED_PREFIX]
//
// Input images [1, FRAMES, 3, H, W] float32 (H, W from the package metadata): read from IMAGES.bin (raw
// little-endian float32) or random. Prints each output's name (metadata lite3r.outputs, in the package's output
// order) and shape; with EXPECTED_PREFIX, compares output NAME with EXPECTED_PREFIX.NAME.bin (raw float32) and
// prints the max relative error. Then times 5 runs. Exit status 0 when everything ran.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, separator);) parts.push_back(part);
  return parts;
}

at::Tensor read_floats(const std::string& path, at::IntArrayRef shape) {
  at::Tensor tensor = at::empty(shape, at::kFloat);
  std::ifstream file(path, std::ios::binary);
  file.read(reinterpret_cast<char*>(tensor.data_ptr<float>()), tensor.numel() * sizeof(float));
  if (!file || file.gcount() != static_cast<std::streamsize>(tensor.numel() * sizeof(float))) {
    throw std::runtime_error("cannot read " + std::to_string(tensor.numel()) + " floats from " + path);
  }
  return tensor;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 5) {
    std::cerr << "usage: run_pt2 MODEL.pt2 FRAMES [IMAGES.bin EXPECTED_PREFIX]\n";
    return 2;
  }
  try {
    c10::InferenceMode inference;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    auto metadata = loader.get_metadata();
    const auto size = split(metadata.at("lite3r.image_size"), 'x');
    const auto names = split(metadata.at("lite3r.outputs"), ',');
    const at::Device device(metadata.at("lite3r.device"));
    const std::vector<int64_t> shape{1, std::stoll(argv[2]), 3, std::stoll(size.at(0)), std::stoll(size.at(1))};
    at::Tensor images = argc == 5 ? read_floats(argv[3], shape) : at::rand(shape);
    std::vector<at::Tensor> inputs{images.to(device)};

    std::vector<at::Tensor> outputs = loader.run(inputs);
    if (outputs.size() != names.size()) throw std::runtime_error("output count differs from lite3r.outputs");
    for (size_t i = 0; i < outputs.size(); ++i) {
      at::Tensor out = outputs[i].to(at::kCPU, at::kFloat);
      std::cout << names[i] << " " << out.sizes();
      if (argc == 5) {
        at::Tensor expected = read_floats(std::string(argv[4]) + "." + names[i] + ".bin", out.sizes());
        double error = ((out - expected).abs().max() / expected.abs().max()).item<double>();
        std::cout << " max_rel_error " << error;
      }
      std::cout << "\n";
    }
    const int runs = 5;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < runs; ++i) outputs = loader.run(inputs);
    outputs[0].to(at::kCPU);  // waits for the device
    const std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
    std::cout << "ms_per_run " << elapsed.count() / runs << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
