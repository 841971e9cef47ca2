//! Proves the local stack and the harness work end to end: Kafka through
//! rdkafka and tansu with a consumer group, and ONNX Runtime loaded from
//! the project's venv (PostgreSQL: `testkit/tests/database.rs`).

use std::time::Duration;

use anyhow::Context;
use headroom_testkit as kit;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};

#[tokio::test]
async fn kafka_record_round_trips_through_a_consumer_group() -> anyhow::Result<()> {
    kit::init_logs();
    let topic = kit::fresh_topic("foundation", 2).await?;
    let producer: FutureProducer = kit::producer_config().create()?;
    for i in 0..10 {
        let payload = format!("payload-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key("series-a").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .context("while producing")?;
    }

    let group = kit::unique_name("group");
    let consumer: StreamConsumer = kit::consumer_config(&group).create()?;
    consumer.subscribe(&[&topic])?;
    let mut got = Vec::new();
    while got.len() < 10 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no record within 30 s")??;
        assert_eq!(msg.key(), Some(&b"series-a"[..]));
        got.push(String::from_utf8(
            msg.payload().unwrap_or_default().to_vec(),
        )?);
        consumer.commit_message(&msg, rdkafka::consumer::CommitMode::Sync)?;
    }
    // One key stays in one partition, so order is kept.
    let want: Vec<String> = (0..10).map(|i| format!("payload-{i}")).collect();
    assert_eq!(got, want);
    Ok(())
}

/// y = x · W + b as one ONNX Gemm node, built with the ONNX protobuf types.
fn gemm_model(w: &[f32; 6], b: &[f32; 2]) -> Vec<u8> {
    use onnx_protobuf::{
        GraphProto, Message as _, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
        TensorShapeProto, TypeProto, ValueInfoProto, tensor_proto::DataType,
        tensor_shape_proto::Dimension, type_proto,
    };
    let tensor = |name: &str, dims: Vec<i64>, data: &[f32]| {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims;
        t.data_type = DataType::FLOAT as i32;
        t.float_data = data.to_vec();
        t
    };
    let value = |name: &str, dims: [Option<i64>; 2]| {
        let mut shape = TensorShapeProto::new();
        for d in dims {
            let mut dim = Dimension::new();
            match d {
                Some(v) => dim.set_dim_value(v),
                None => dim.set_dim_param("batch".into()),
            }
            shape.dim.push(dim);
        }
        let mut tt = type_proto::Tensor::new();
        tt.elem_type = DataType::FLOAT as i32;
        tt.shape = Some(shape).into();
        let mut ty = TypeProto::new();
        ty.set_tensor_type(tt);
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v.type_ = Some(ty).into();
        v
    };
    let mut node = NodeProto::new();
    node.op_type = "Gemm".into();
    node.input = vec!["x".into(), "w".into(), "b".into()];
    node.output = vec!["y".into()];
    let mut graph = GraphProto::new();
    graph.name = "gemm".into();
    graph.node.push(node);
    graph.initializer = vec![tensor("w", vec![3, 2], w), tensor("b", vec![2], b)];
    graph.input.push(value("x", [None, Some(3)]));
    graph.output.push(value("y", [None, Some(2)]));
    let mut opset = OperatorSetIdProto::new();
    opset.version = 17;
    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.opset_import.push(opset);
    model.producer_name = "headroom-tests".into();
    model.graph = Some(graph).into();
    model
        .write_to_bytes()
        .expect("a model in memory always encodes")
}

#[test]
fn ort_loads_the_venv_library_and_runs_a_graph() -> anyhow::Result<()> {
    let dylib = std::env::var("ORT_DYLIB_PATH")
        .context("ORT_DYLIB_PATH is not set: run `scripts/stack up` and source .stack/env")?;
    assert!(
        std::path::Path::new(&dylib).exists(),
        "ORT_DYLIB_PATH points at a missing file: {dylib}"
    );
    ort::init_from(&dylib).commit()?;

    let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [0.5, -0.5];
    let mut session = ort::session::Session::builder()?.commit_from_memory(&gemm_model(&w, &b))?;
    let x = ndarray::array![[1.0_f32, 0.0, 2.0], [0.0, 1.0, -1.0]];
    let outputs = session.run(ort::inputs!["x" => ort::value::TensorRef::from_array_view(&x)?])?;
    let y = outputs["y"].try_extract_array::<f32>()?;
    // Row 0: [1*1 + 2*5, 1*2 + 2*6] + b; row 1: [3 - 5, 4 - 6] + b.
    let want = [[11.5_f32, 13.5], [-1.5, -2.5]];
    for (i, row) in want.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert!(
                (y[[i, j]] - v).abs() < 1e-6,
                "y[{i},{j}] = {} != {v}",
                y[[i, j]]
            );
        }
    }
    Ok(())
}
