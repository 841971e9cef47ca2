//! Export to ONNX: the trained weights as a graph ONNX Runtime runs
//! (`Gemm`/`Relu` layers, then the non-crossing head as `Softplus`, `Mul`,
//! `Add` and a `MatMul` by the cumulating matrix), with the [`ModelSpec`]
//! in the model's metadata. Built with `onnx-protobuf`'s generated types.

use std::path::Path;

use headroom_model::{INPUT, METADATA_KEY, ModelSpec, OUTPUT};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message as _, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::Dimension,
    type_proto,
};

use crate::{
    Error, Result,
    network::{Mlp, head_constants},
};

/// ONNX opset the graph uses (Gemm, Relu, Softplus, Mul, Add, MatMul).
const OPSET: i64 = 17;
/// IR version of that opset's era; ONNX Runtime 1.14 and later read it.
const IR_VERSION: i64 = 8;

fn tensor(name: &str, dims: Vec<i64>, data: Vec<f32>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims;
    t.data_type = DataType::FLOAT as i32;
    t.float_data = data;
    t
}

fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let mut batch = Dimension::new();
    batch.set_dim_param("batch".into());
    let mut cols = Dimension::new();
    cols.set_dim_value(width as i64);
    shape.dim = vec![batch, cols];
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = DataType::FLOAT as i32;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tt);
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = output.into();
    n.input = inputs.iter().map(|s| (*s).to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attributes;
    n
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

/// The model as ONNX bytes.
pub fn to_onnx(net: &Mlp, spec: &ModelSpec) -> Result<Vec<u8>> {
    if net.inputs() != spec.width() || net.quantiles != spec.quantiles {
        return Err(Error::Export(format!(
            "network takes {} features for {:?}, the spec describes {} for {:?}",
            net.inputs(),
            net.quantiles,
            spec.width(),
            spec.quantiles
        )));
    }
    let mut graph = GraphProto::new();
    graph.name = "headroom_usage".into();
    let mut h = INPUT.to_string();
    let last = net.layers.len() - 1;
    for (i, l) in net.layers.iter().enumerate() {
        let (w, b) = (format!("layer{i}.weight"), format!("layer{i}.bias"));
        let dims: Vec<i64> = l.weight.dims().iter().map(|d| *d as i64).collect();
        let weight: Vec<f32> = l.weight.as_tensor().flatten_all()?.to_vec1()?;
        let bias: Vec<f32> = l.bias.as_tensor().to_vec1()?;
        graph.initializer.push(tensor(&w, dims, weight));
        graph
            .initializer
            .push(tensor(&b, vec![bias.len() as i64], bias));
        let gemm = format!("layer{i}.gemm");
        graph.node.push(node(
            "Gemm",
            &[&h, &w, &b],
            &gemm,
            vec![int_attribute("transB", 1)],
        ));
        h = if i < last {
            let relu = format!("layer{i}.relu");
            graph.node.push(node("Relu", &[&gemm], &relu, Vec::new()));
            relu
        } else {
            gemm
        };
    }
    let k = spec.quantiles.len();
    let (first, rest, upper) = head_constants(k);
    graph
        .initializer
        .push(tensor("head.first", vec![1, k as i64], first));
    graph
        .initializer
        .push(tensor("head.rest", vec![1, k as i64], rest));
    graph
        .initializer
        .push(tensor("head.cumulate", vec![k as i64, k as i64], upper));
    graph
        .node
        .push(node("Softplus", &[&h], "head.softplus", Vec::new()));
    graph
        .node
        .push(node("Mul", &[&h, "head.first"], "head.base", Vec::new()));
    graph.node.push(node(
        "Mul",
        &["head.softplus", "head.rest"],
        "head.increments",
        Vec::new(),
    ));
    graph.node.push(node(
        "Add",
        &["head.base", "head.increments"],
        "head.steps",
        Vec::new(),
    ));
    graph.node.push(node(
        "MatMul",
        &["head.steps", "head.cumulate"],
        OUTPUT,
        Vec::new(),
    ));
    graph.input.push(value_info(INPUT, spec.width()));
    graph.output.push(value_info(OUTPUT, k));

    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.opset_import.push(opset);
    model.producer_name = "headroom-train".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.model_version = 1;
    model.doc_string = format!(
        "Headroom usage model {}: quantiles {:?} of a service's usage; see headroom-model for the encoding.",
        spec.version, spec.quantiles
    );
    let mut entry = StringStringEntryProto::new();
    entry.key = METADATA_KEY.into();
    entry.value = spec.to_json();
    model.metadata_props.push(entry);
    model.graph = Some(graph).into();
    model
        .write_to_bytes()
        .map_err(|e| Error::Export(e.to_string()))
}

/// Writes the model to `path` through a temporary file and a rename, so a
/// failure never leaves a half-written or replaced model behind.
pub fn write_model(path: &Path, net: &Mlp, spec: &ModelSpec) -> Result<()> {
    let bytes = to_onnx(net, spec)?;
    crate::write_atomically(path, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Reads the spec back from an ONNX file's metadata.
pub fn read_spec(path: &Path) -> Result<ModelSpec> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = ModelProto::parse_from_bytes(&bytes)
        .map_err(|e| Error::Export(format!("{} is not an ONNX model: {e}", path.display())))?;
    let props = model
        .metadata_props
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect();
    Ok(ModelSpec::from_metadata(&props)?)
}
