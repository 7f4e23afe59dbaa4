"""Takes 8-bit RGB images: the server converts colour orders and refuses lossy casts."""

import numpy as np

import tms_server


class Model(tms_server.Model):
    thread_safe = True
    version = "2.1"
    color = "rgb"
    dtype = "uint8"
    output_color = "bgr"
    input_shape = (-1, -1, 3)
    max_batch_delay = 0.001  # RunImage calls within 1 ms run as one batch (run_batch loops)

    def run(self, image, args):
        return {"shape": list(image.shape), "first_pixel": image[0, 0].tolist()}

    def run_image_to_image(self, images, args):
        return [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
