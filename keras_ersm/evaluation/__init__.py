"""Evaluation of ERSM models: functions over (model, tf.data) -> numbers.

Every dataset-level function returns a JSON-serialisable dict.
"""

from keras_ersm.evaluation.accuracy import predict_classes
from keras_ersm.evaluation.accuracy import top1_accuracy
from keras_ersm.evaluation.background import background_reliance
from keras_ersm.evaluation.curves import curve_area
from keras_ersm.evaluation.deletion import DELETION_ORDERS
from keras_ersm.evaluation.deletion import DeletionCurve
from keras_ersm.evaluation.deletion import deletion_correct
from keras_ersm.evaluation.deletion import deletion_curve
from keras_ersm.evaluation.deletion import deletion_curves
from keras_ersm.evaluation.deletion import deletion_ranks
from keras_ersm.evaluation.deletion import deletion_steps
from keras_ersm.evaluation.gradcam import gradcam_from_split
from keras_ersm.evaluation.gradcam import gradcam_grid
from keras_ersm.evaluation.gradcam import gradcam_image
from keras_ersm.evaluation.localization import iou_by_threshold
from keras_ersm.evaluation.localization import localization_scores
from keras_ersm.evaluation.localization import mask_iou
from keras_ersm.evaluation.localization import pointing_hits
from keras_ersm.evaluation.maps import ersm_maps
from keras_ersm.evaluation.maps import gradcam_maps
from keras_ersm.evaluation.maps import magnitude_maps
from keras_ersm.evaluation.maps import map_batches
from keras_ersm.evaluation.maps import whole_image_maps
from keras_ersm.evaluation.object_tokens import object_token_fractions
from keras_ersm.evaluation.object_tokens import object_token_statistics
from keras_ersm.evaluation.object_tokens import object_tokens
from keras_ersm.evaluation.object_tokens import spearman
from keras_ersm.evaluation.object_tokens import token_mask_statistics
from keras_ersm.evaluation.occlusion import bounding_box_regions
from keras_ersm.evaluation.occlusion import box_part_regions
from keras_ersm.evaluation.occlusion import object_occlusion
from keras_ersm.evaluation.occlusion import occlude
from keras_ersm.evaluation.occlusion import occlusion_robustness
from keras_ersm.evaluation.occlusion import random_square_regions
from keras_ersm.evaluation.occlusion import square_side
from keras_ersm.evaluation.precision_recall import average_precision
from keras_ersm.evaluation.precision_recall import pxap
from keras_ersm.evaluation.relative_occlusion import BOX_FRACTIONS
from keras_ersm.evaluation.relative_occlusion import object_relative_occlusion
from keras_ersm.evaluation.sparsity import binary_entropy
from keras_ersm.evaluation.sparsity import sparsity_statistics
from keras_ersm.evaluation.splitting import MaskSplit
from keras_ersm.evaluation.splitting import find_mask_layer
from keras_ersm.evaluation.splitting import last_feature_map_layer
from keras_ersm.evaluation.splitting import split_at
from keras_ersm.evaluation.splitting import split_at_layer
from keras_ersm.evaluation.splitting import split_at_mask
from keras_ersm.evaluation.threshold_selection import DEFAULT_THRESHOLDS
from keras_ersm.evaluation.threshold_selection import validated_iou
from keras_ersm.evaluation.tokens import expand_token_grid
from keras_ersm.evaluation.tokens import normalize_maps
from keras_ersm.evaluation.tokens import resize_maps
from keras_ersm.evaluation.tokens import token_norms
