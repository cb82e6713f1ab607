//! ONNX export: per layer one `Gemm` (`transB = 1`, so the weights keep
//! their `(out, in)` layout) and its activation node (`Sigmoid`, `Relu`,
//! `Tanh`, `Softmax` over the last axis, nothing for linear), at opset 13.
//! The graph's input is `input: float[batch, n_in]` with a symbolic `batch`,
//! its output `output: float[batch, n_out]`; the standardisation is folded
//! into the first layer ([`super::dense_layers`]), so raw inputs go in.
//!
//! The protobuf is written by a few messages derived with `prost` below, with
//! the field numbers of the official `onnx.proto`: the Rust crates that carry
//! the whole schema are unmaintained or pull in a second protobuf runtime,
//! and an MLP needs nine messages. Each `oneof` is written as optional fields,
//! which is the same on the wire.

use super::{dense_layers, DenseLayer};
use crate::checkpoint::{le_bytes, Checkpoint};
use crate::error::Result;
use crate::network::Activation;
use prost::Message;

/// The operator set the graph declares.
pub const OPSET: i64 = 13;
/// The IR version that goes with [`OPSET`] (ONNX 1.8).
const IR_VERSION: i64 = 7;
/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// `AttributeProto.AttributeType.INT`.
const ATTR_INT: i32 = 2;

/// The checkpoint as an ONNX model's bytes (see the module docs).
pub fn to_onnx(ckpt: &Checkpoint) -> Result<Vec<u8>> {
    let layers = dense_layers(ckpt)?;
    let net = ckpt.params.network();
    let mut nodes = Vec::new();
    let mut initializer = Vec::new();
    let mut prev = "input".to_string();
    let last = layers.len() - 1;
    for (l, ly) in layers.iter().enumerate() {
        let (w, b) = (format!("layers.{l}.weight"), format!("layers.{l}.bias"));
        initializer.push(tensor(&w, &[ly.n_out, ly.n_in], &ly.weight));
        initializer.push(tensor(&b, &[ly.n_out], &ly.bias));
        let op = activation_op(ly);
        let name = |s: &str| match (l == last, s) {
            (true, "out") => "output".to_string(),
            _ => format!("layers.{l}.{s}"),
        };
        let z = if op.is_some() { name("z") } else { name("out") };
        nodes.push(NodeProto {
            input: vec![prev, w, b],
            output: vec![z.clone()],
            name: format!("layers.{l}.gemm"),
            op_type: "Gemm".into(),
            attribute: vec![int_attr("transB", 1)],
        });
        prev = z;
        if let Some(op) = op {
            let out = name("out");
            nodes.push(NodeProto {
                input: vec![prev],
                output: vec![out.clone()],
                name: format!("layers.{l}.{}", ly.act.name()),
                op_type: op.into(),
                attribute: match ly.act {
                    Activation::Softmax => vec![int_attr("axis", -1)],
                    _ => Vec::new(),
                },
            });
            prev = out;
        }
    }
    let folded = if ckpt.standardizer.is_some() {
        "; the input standardisation ((x - mean) / std) is folded into layers.0"
    } else {
        ""
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "shadertrain".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("shadertrain MLP {}{folded}", net.spec()),
        graph: Some(GraphProto {
            node: nodes,
            name: "shadertrain".into(),
            initializer,
            input: vec![value_info("input", net.inputs())],
            output: vec![value_info("output", net.outputs())],
        }),
        metadata_props: vec![StringStringEntryProto {
            key: "layers".into(),
            value: net.spec(),
        }],
    };
    Ok(model.encode_to_vec())
}

/// The node after layer `ly`'s `Gemm`, if any.
fn activation_op(ly: &DenseLayer) -> Option<&'static str> {
    match ly.act {
        Activation::Sigmoid => Some("Sigmoid"),
        Activation::Relu => Some("Relu"),
        Activation::Tanh => Some("Tanh"),
        Activation::Linear => None,
        Activation::Softmax => Some("Softmax"),
    }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.into(),
        raw_data: le_bytes(values),
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: ATTR_INT,
    }
}

/// `float[batch, width]`.
fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dim = |value: Option<i64>, param: Option<&str>| Dimension {
        dim_value: value,
        dim_param: param.map(String::from),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![dim(None, Some("batch")), dim(Some(width as i64), None)],
                }),
            }),
        }),
    }
}

// The messages, with only the fields written; tags as in onnx.proto.

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    /// `AttributeType`, required since IR version 2.
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    /// Little-endian values.
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

/// `oneof value { Tensor tensor_type = 1; ... }`.
#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: `oneof value { int64 dim_value = 1; string dim_param = 2; }`.
#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}
